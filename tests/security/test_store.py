"""The tracking store: created and migrated under the lock (two first runs in parallel), private
file modes, no credentials in what is printed or saved, redaction of ids and paths."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from cxrssl.tracking_security import (hash_id, open_store, redact_csv, redact_uri, scrub_hydra_files, scrub_params,
                                      store_salt)

FIRST_RUN = """
import sys, time
from pathlib import Path
from omegaconf import OmegaConf
from cxrssl.tracking import start_tracking
import mlflow, mlflow.store.tracking.sqlalchemy_store  # imports paid before the start signal
go = Path(sys.argv[2])
(go.parent / f"ready-{__import__('os').getpid()}").write_text("")
while not go.exists():
    time.sleep(0.005)
cfg = OmegaConf.create({"tracking_uri": f"sqlite:///{sys.argv[1]}", "experiment_name": "race"})
tracker = start_tracking(cfg, command="pretrain", tags={}, params={"a": 1}, run_name="r")
tracker.end()
print("OK", tracker.run_id)
"""


def test_two_first_runs_against_a_fresh_store_both_succeed(tmp_path):
    db, go = tmp_path / "mlflow.db", tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", FIRST_RUN, str(db), str(go)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, cwd=tmp_path) for _ in range(2)]
    deadline = time.time() + 120
    while len(list(tmp_path.glob("ready-*"))) < 2 and time.time() < deadline:
        time.sleep(0.05)  # both have imported mlflow and wait on the signal
    go.write_text("")
    results = [p.communicate(timeout=180) for p in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0 and out.startswith("OK"), err[-3000:]
    assert oct(db.stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "mlartifacts").stat().st_mode & 0o777) == "0o700"


def test_store_is_created_private(tmp_path):
    open_store(f"sqlite:///{tmp_path}/s/mlflow.db")
    assert oct((tmp_path / "s" / "mlflow.db").stat().st_mode & 0o777) == "0o600"
    assert oct((tmp_path / "s" / "mlartifacts").stat().st_mode & 0o777) == "0o700"
    salt = store_salt(f"sqlite:///{tmp_path}/s/mlflow.db")
    assert oct((tmp_path / "s" / "mlflow.db.salt").stat().st_mode & 0o777) == "0o600"
    assert store_salt(f"sqlite:///{tmp_path}/s/mlflow.db") == salt and len(salt) == 64


def test_credentials_never_printed_or_saved(tmp_path):
    from cxrssl.tracking import TrackingUnavailable, check_reachable

    uri = "http://alice:s3cret@127.0.0.1:9"
    assert redact_uri(uri) == "http://127.0.0.1:9"
    with pytest.raises(TrackingUnavailable) as info:
        check_reachable(uri, timeout_s=1)
    assert "s3cret" not in str(info.value) and "127.0.0.1:9" in str(info.value)
    hydra = tmp_path / ".hydra"
    hydra.mkdir()
    (hydra / "overrides.yaml").write_text(f"- mlflow.tracking_uri={uri}\n")
    scrub_hydra_files(tmp_path)
    assert (hydra / "overrides.yaml").read_text() == "- mlflow.tracking_uri=http://127.0.0.1:9\n"
    assert scrub_params({"mlflow.tracking_uri": uri}) == {"mlflow.tracking_uri": "http://127.0.0.1:9"}


def test_redaction_hashes_ids_with_the_store_salt_and_strips_paths(tmp_path):
    frame = pd.DataFrame({"patient_id": ["P1", "P1", "P2"], "image_id": ["a", "b", "c"],
                          "path": ["/data/nih/images/a.png", "/data/nih/images/b.png", "/x/c.png"],
                          "age": [50, 50, 61], "note": ["/home/ann/secret/f.txt", "ok", ""]})
    frame.to_csv(tmp_path / "p.csv", index=False)
    salt_a, salt_b = b"a" * 64, b"b" * 64
    out = pd.read_csv(redact_csv(tmp_path / "p.csv", tmp_path / "r.csv", salt_a), dtype=str, keep_default_na=False)
    assert list(out["patient_id"]) == [hash_id("P1", salt_a)] * 2 + [hash_id("P2", salt_a)]
    assert hash_id("P1", salt_a) != hash_id("P1", salt_b) and "P1" not in out.to_csv()
    assert list(out["path"]) == ["a.png", "b.png", "c.png"] and list(out["age"]) == ["50", "50", "61"]
    assert "/home/ann" not in out.to_csv()
    params = scrub_params({"data.root": "/data/nih", "inputs": "[/a/b.png, /c/d.png]", "lr": "0.001"},
                          {"mlflow": {"redact": True}})
    assert params == {"data.root": "<abs>/nih", "inputs": "[<abs>/b.png, <abs>/d.png]", "lr": "0.001"}
    uris = scrub_params({"a": "sqlite:////home/ann/mlflow.db", "b": "http://alice:pw@host:5000/x",
                         "c": "runs:/abc/checkpoints/best.pt"}, {"mlflow": {"redact": True}})
    assert uris == {"a": "sqlite:///<abs>/mlflow.db", "b": "http://host:5000/x", "c": "runs:/abc/checkpoints/best.pt"}


def test_redacted_run_logs_no_ids_or_absolute_paths(tmp_path):
    """End to end: a finetune with mlflow.redact=true; every logged CSV, param and tag is checked."""
    from mlflow import MlflowClient

    from cxrssl.commands.inprocess import run_command
    from tests.conftest import TINY

    db = tmp_path / "mlflow.db"
    _, summary = run_command("pretrain", [*TINY, f"mlflow.tracking_uri=sqlite:///{db}", "mlflow.redact=true",
                                          "trainer.limit_batches=1", "mlflow.log_model=false"], run_dir=tmp_path / "run")
    client = MlflowClient(f"sqlite:///{db}")
    run = client.get_run(summary["mlflow_run_id"])
    for text in [*run.data.params.values(), *run.data.tags.values()]:
        assert str(tmp_path) not in text and os.environ.get("CXRSSL_CACHE", "/nonexistent") not in text
    local = pd.read_csv(tmp_path / "run" / "splits.csv", dtype=str)
    logged_dir = client.download_artifacts(run.info.run_id, "data", str(tmp_path / "dl"))
    logged = pd.read_csv(os.path.join(logged_dir, "splits.csv"), dtype=str)
    assert not set(local["patient_id"]) & set(logged["patient_id"])
    assert logged["patient_id"].nunique() == local["patient_id"].nunique()
    assert not logged.astype(str).apply(lambda c: c.str.startswith("/")).any().any()
