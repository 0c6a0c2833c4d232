"""`python -m cxrssl.launch` = torchrun whose exit status says "preempted" (143), so a SLURM
requeue script can tell a preemption from a crash; plain torchrun exits 1 for both. Two real ranks
(a tiny script, no process group) under the real elastic agent."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

RANK = '''
import os, signal, sys, time
from pathlib import Path
mode, out = sys.argv[1], Path(sys.argv[2])
rank = int(os.environ["RANK"])
if mode == "preempted":
    sys.exit(143)
if mode == "crash":
    sys.exit(1 if rank == 1 else 143)
def stop(signum, frame):  # as cxrssl: write the recovery checkpoint, then exit 143
    (out / f"stopped{rank}").write_text(signal.Signals(signum).name)
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGUSR1, stop)
(out / f"ready{rank}").write_text(str(os.getpid()))
time.sleep(60)
'''


@pytest.fixture
def launch(tmp_path):
    """Start `python -m <launcher> --nproc_per_node=2 rank.py <mode>` in its own session; stderr
    goes to a file (a rank left behind by a dead agent would hold a pipe open), and the agent and
    any rank still running at the end are killed."""
    started = []

    def start(mode: str, launcher: str = "cxrssl.launch") -> subprocess.Popen:
        script = tmp_path / "rank.py"
        script.write_text(RANK)
        env = {k: v for k, v in os.environ.items() if k != "PET_SIGNALS_TO_HANDLE"}
        with open(tmp_path / f"stderr{len(started)}.txt", "w") as err:
            proc = subprocess.Popen([sys.executable, "-m", launcher, "--standalone", "--nproc_per_node=2",
                                     "--monitor-interval=0.1", str(script), mode, str(tmp_path)],
                                    cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True)
        proc.stderr_path = err.name
        started.append(proc)
        return proc

    yield start
    for proc in started:  # the agent's session; torchrun starts each rank in a session of its own
        _kill(lambda: os.killpg(proc.pid, signal.SIGKILL))
    for ready in tmp_path.glob("ready*"):
        pid = int(ready.read_text())
        cmdline = Path(f"/proc/{pid}/cmdline")
        if cmdline.exists() and str(tmp_path) in cmdline.read_text(errors="replace"):  # still that rank
            _kill(lambda: os.kill(pid, signal.SIGKILL))


def _kill(action) -> None:
    try:
        action()
    except (ProcessLookupError, PermissionError):
        pass


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    status = proc.wait(timeout=120)
    return status, Path(proc.stderr_path).read_text()


def test_all_ranks_preempted_exits_143_where_torchrun_exits_1(launch):
    assert finish(launch("preempted", launcher="torch.distributed.run"))[0] == 1  # why the wrapper exists
    status, err = finish(launch("preempted"))
    assert status == 143, err[-3000:]
    assert "resume=true" in err


def test_a_crashed_rank_still_exits_1(launch):
    status, err = finish(launch("crash"))
    assert status == 1, err[-3000:]
    assert "ChildFailedError" in err  # torchrun's own report


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_signal_to_the_agent_reaches_the_ranks_and_exits_143(launch, tmp_path, signum):
    proc = launch("wait")
    deadline = time.monotonic() + 120
    while not all((tmp_path / f"ready{r}").exists() for r in (0, 1)):
        assert proc.poll() is None and time.monotonic() < deadline, finish(proc)[1][-3000:]
        time.sleep(0.1)
    proc.send_signal(signum)  # to the agent only, not to its ranks
    status, err = finish(proc)
    assert status == 143, err[-3000:]
    assert [(tmp_path / f"stopped{r}").read_text() for r in (0, 1)] == [signum.name] * 2
