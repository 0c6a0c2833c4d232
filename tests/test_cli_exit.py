"""A command whose DataLoader workers are still alive at the end exits; it does not hang.

Our workers ignore SIGTERM (preemption belongs to the main process), and multiprocessing's exit
handler terminates daemonic children with SIGTERM and then joins them — forever. Before
cxrssl/data/workers.py stopped live workers at exit, `cxrssl pretrain lr_find=true` (its range
test leaves the training loader mid-epoch) and any command that failed with workers running
printed their last line and never exited. Real subprocesses, a real CLI, 2 loader workers.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from tests.conftest import TINY

WORKERS = [o for o in TINY if not o.startswith("data.num_workers")] + ["data.num_workers=2", "mlflow.enabled=false"]


def run_cli(args: list[str], tmp_path, timeout: float = 150) -> subprocess.CompletedProcess:
    proc = subprocess.Popen([sys.executable, "-m", "cxrssl", *args, f"hydra.run.dir={tmp_path / 'run'}"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the command and its workers
        out, _ = proc.communicate()
        pytest.fail(f"`cxrssl {' '.join(args[:2])}` did not exit within {timeout:.0f} s; last output:\n{out[-1500:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def test_lr_find_true_with_workers_exits(tmp_path):
    done = run_cli(["pretrain", *WORKERS, "lr_find=true", "lr_finder.num_steps=10"], tmp_path)
    assert done.returncode == 0, done.stdout[-1500:]
    assert "LR range test" in done.stdout


def test_a_failing_command_with_live_workers_exits_with_its_error(tmp_path):
    # the range test diverges at once (loss not finite at lr=1e8) and the command fails with the
    # training loader mid-epoch, outside fit: one clear message, exit status 2, and it exits
    done = run_cli(["pretrain", *WORKERS, "lr_find=true", "lr_finder.start_lr=1e8", "lr_finder.end_lr=1e9",
                    "trainer.grad_clip_norm=null"], tmp_path)
    assert done.returncode == 2, done.stdout[-1500:]
    assert "error: the LR range test recorded only" in done.stdout and "lower lr_finder.start_lr" in done.stdout
