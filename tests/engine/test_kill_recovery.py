"""Kill a training process anywhere (SIGKILL mid-step, SIGKILL mid-checkpoint-write, SIGTERM) and
resume: the final weights equal an uninterrupted run's exactly (tolerance 0, CPU), and after every
kill each checkpoint file on disk still loads."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from cxrssl.engine.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
TOTAL_STEPS = 18  # recovery_driver: 3 epochs × 6 batches


def start(run_dir: Path, resume: bool, pause_s: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("CXRSSL_TEST_CHECKPOINT_PAUSE_S", None)
    if pause_s:
        env["CXRSSL_TEST_CHECKPOINT_PAUSE_S"] = str(pause_s)
    cmd = [sys.executable, "-m", "tests.engine.recovery_driver", str(run_dir)] + (["--resume"] if resume else [])
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_for(proc: subprocess.Popen, predicate, timeout_s: float = 300) -> list[str]:
    """Read lines until `predicate(line)` is true; return all lines read."""
    lines, deadline = [], time.monotonic() + timeout_s
    for line in proc.stdout:
        lines.append(line.rstrip())
        if predicate(line):
            return lines
        assert time.monotonic() < deadline, lines[-20:]
    raise AssertionError(f"process ended (rc={proc.wait()}) before the expected line:\n" + "\n".join(lines[-30:]))


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    out = proc.stdout.read()
    return proc.wait(timeout=300), out


def assert_checkpoints_load(run_dir: Path, why: str) -> int:
    """Every complete checkpoint loads; returns the newest global step on disk."""
    steps = []
    for name in ("last.pt", "best.pt", "recovery.pt"):
        path = run_dir / "checkpoints" / name
        if path.exists():
            steps.append(load_checkpoint(path)["global_step"])  # raises if truncated/corrupt
    assert steps, f"no checkpoint after {why}"
    return max(steps)


def test_sigkill_anywhere_then_resume_equals_uninterrupted_run(tmp_path):
    rng = random.Random(int(os.environ.get("CXRSSL_KILL_SEED", "20261127")))
    straight = tmp_path / "straight"
    rc, out = finish(start(straight, resume=False))
    assert rc == 0, out
    expected = torch.load(straight / "final.pt", weights_only=True)

    run = tmp_path / "killed"
    # 1. SIGKILL at a random step boundary-ish moment (during the post-step sleep or the next step).
    kill_step = rng.randint(2, 8)
    proc = start(run, resume=False)
    wait_for(proc, lambda line: line.strip() == f"step {kill_step}")
    time.sleep(rng.uniform(0.0, 0.08))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    on_disk = assert_checkpoints_load(run, f"SIGKILL after step {kill_step}")
    assert on_disk >= kill_step - 1

    # 2. SIGKILL while a checkpoint is being written (temp file complete, target not yet replaced).
    proc = start(run, resume=True, pause_s=60)
    wait_for(proc, lambda line: line.startswith("checkpoint pause:"))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert list((run / "checkpoints").glob("*.tmp-*")), "the kill should have hit mid-write"
    after_pause_kill = assert_checkpoints_load(run, "SIGKILL mid-write")
    assert after_pause_kill >= on_disk

    # 3. SIGTERM (preemption) at a random later step: recovery checkpoint, exit status 143.
    term_step = rng.randint(after_pause_kill + 2, TOTAL_STEPS - 3)
    proc = start(run, resume=True)
    wait_for(proc, lambda line: line.strip() == f"step {term_step}")
    proc.send_signal(signal.SIGTERM)
    rc, out = finish(proc)
    assert rc == 143 and "resume=true" in out, out
    assert assert_checkpoints_load(run, "SIGTERM") >= term_step

    # 4. Resume to the end.
    rc, out = finish(start(run, resume=True))
    assert rc == 0, out
    assert not list((run / "checkpoints").glob("*.tmp-*")), "stale temporaries are cleaned up"
    got = torch.load(run / "final.pt", weights_only=True)
    for key, value in expected.items():
        assert torch.equal(got[key], value), (key, kill_step, term_step)
