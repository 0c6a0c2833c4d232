"""Session-wide settings: the synthetic cache lives in one temp dir, so phantoms are drawn once."""
from __future__ import annotations

import os

import pytest

#: Overrides for fast end-to-end runs: tiny timm backbone, 32 px, a few dozen synthetic patients.
#: ``preset=easy``: the original phantom, learnable in seconds (the v2 default is deliberately harder).
TINY = ["backbone=tiny", "data.image_size=32", "data.synthetic.n_patients=60", "data.synthetic.native_size=96",
        "data.synthetic.preset=easy",
        "data.num_workers=0", "data.batch_size=16", "trainer.max_epochs=1", "trainer.progress=false"]


@pytest.fixture(scope="session", autouse=True)
def synthetic_cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("cxrssl_cache")
    old = os.environ.get("CXRSSL_CACHE")
    os.environ["CXRSSL_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("CXRSSL_CACHE", None)
    else:
        os.environ["CXRSSL_CACHE"] = old


@pytest.fixture
def tiny(tmp_path):
    """TINY plus an MLflow store inside this test's tmp dir."""
    return [*TINY, f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]


# ---------------------------------------------------------------- clean exit
# Three full runs printed their result line and then never exited: module-scoped fixtures keep
# loaders whose forked DataLoader workers (persistent_workers) are still alive at interpreter
# shutdown, where multiprocessing's exit handler waits on them. CI would then hang until its time
# limit. Once pytest has reported, stop the workers and leave with pytest's own exit status.
@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    session.config._cxrssl_exitstatus = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    import multiprocessing
    import sys

    status = getattr(config, "_cxrssl_exitstatus", None)
    if status is None or os.environ.get("CXRSSL_TEST_NORMAL_EXIT"):
        return
    for child in multiprocessing.active_children():
        child.kill()  # SIGKILL: loader workers ignore SIGTERM (cxrssl/engine/signals.py)
    for child in multiprocessing.active_children():
        child.join(timeout=1)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)
