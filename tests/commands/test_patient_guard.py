"""Pretrain/finetune patient guard (issue 8 item 6), both directions, through the real commands.

Pretraining with data.split_seed=0 and then fine-tuning / evaluating with data.split_seed=1 moves
pretraining patients into validation and test: refused unless `<command>.allow_pretrain_overlap=true`,
which is then recorded in summary.json and as an MLflow tag.
"""
from __future__ import annotations

import pandas as pd
import pytest
import torch

from cxrssl.commands.inprocess import run_command
from cxrssl.commands.patient_guard import check_patients, hash_patients, overlap, patient_record
from cxrssl.engine.checkpoint import load_checkpoint
from cxrssl.errors import PatientOverlapError, UserError
from tests.conftest import TINY


def _rows(*patients: str) -> pd.DataFrame:
    return pd.DataFrame({"patient_id": list(patients)})


def test_hashes_are_compact_sorted_and_count_overlap():
    hashes = hash_patients(["b", "a", "a", "c"])
    assert hashes.dtype == torch.int64 and hashes.numel() == 3 and torch.equal(hashes, hashes.sort().values)
    record = patient_record(_rows("p1", "p2", "p3"), {"source": "csv", "root": "/data/x"})
    assert record["n_patients"] == 3 and record["data"]["source"] == "csv"
    assert overlap(record, ["p3", "p4", "p1", "p1"]) == 2 and overlap(None, ["p1"]) == 0
    assert issubclass(PatientOverlapError, UserError)


def test_check_refuses_names_the_override_and_allows_loudly(capsys):
    record = patient_record(_rows("p1", "p2"), {"source": "nih", "root": "/data/nih"})
    splits = {"test": _rows("p2", "p9")}
    with pytest.raises(PatientOverlapError, match=r"1 of the 2 test patients.*evaluate\.allow_pretrain_overlap=true"):
        check_patients({"pretrain_patients": record}, splits, allow=False, key="evaluate.allow_pretrain_overlap",
                       data_cfg={"source": "csv"})
    report = check_patients({"pretrain_patients": record}, splits, allow=True, key="evaluate.allow_pretrain_overlap",
                            data_cfg={"source": "csv"})
    assert report["overlaps"][0]["patients"] == 1 and "WARNING" in capsys.readouterr().out
    assert check_patients({"pretrain_patients": record}, {"test": _rows("p7")}, allow=False, key="k",
                          data_cfg={}) is None


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("guard")
    mlflow = [f"mlflow.tracking_uri=sqlite:///{root}/mlflow.db"]
    run_command("pretrain", [*TINY, *mlflow, "data.split_seed=0"], run_dir=root / "pre")
    return root, mlflow


def test_pretrain_records_its_training_patients(runs):
    root, _ = runs
    meta = load_checkpoint(root / "pre" / "checkpoints" / "best.pt")["meta"]
    record = meta["pretrain_patients"]
    splits = pd.read_csv(root / "pre" / "splits.csv", dtype=str)
    train = splits[splits["split"] == "train"]["patient_id"].unique()
    assert record["n_patients"] == len(train) == record["hashes"].numel()
    assert overlap(record, train) == len(train)
    assert overlap(record, splits[splits["split"] != "train"]["patient_id"].unique()) == 0


def test_finetune_and_evaluate_guard_both_directions(runs):
    root, mlflow = runs
    pre = root / "pre" / "checkpoints" / "best.pt"
    # finetune on the same splits: no overlap, the records are carried into the finetune checkpoint
    # finetune with other splits: pretraining patients land in val/test -> refused, naming the override
    with pytest.raises(PatientOverlapError, match=r"finetune\.allow_pretrain_overlap=true"):
        run_command("finetune", [*TINY, *mlflow, f"pretrained={pre}", "data.split_seed=1"], run_dir=root / "ft_refused")
    _, summary = run_command("finetune", [*TINY, *mlflow, f"pretrained={pre}", "data.split_seed=1",
                                          "finetune.allow_pretrain_overlap=true"], run_dir=root / "ft_allowed")
    assert summary["pretrain_overlap"]["allowed_by"] == "finetune.allow_pretrain_overlap=true"
    assert {o["split"] for o in summary["pretrain_overlap"]["overlaps"]} == {"val", "test"}
    from mlflow import MlflowClient

    tags = MlflowClient(tracking_uri=mlflow[0].split("=", 1)[1]).get_run(summary["mlflow_run_id"]).data.tags
    assert tags["pretrain_overlap"].startswith("ALLOWED by finetune.allow_pretrain_overlap=true")
    ft = root / "ft_allowed" / "checkpoints" / "best.pt"
    meta = load_checkpoint(ft)["meta"]
    assert meta["pretrain_patients"]["n_patients"] > 0 and meta["finetune_patients"]["n_patients"] > 0

    # evaluate direction: the checkpoint's own data (split_seed=1) still holds pretraining patients in test
    with pytest.raises(PatientOverlapError, match=r"used in the pretraining of the encoder.*evaluate\.allow"):
        run_command("evaluate", [*mlflow, f"checkpoint={ft}", "evaluate.n_boot=10"], run_dir=root / "ev_refused")
    # data.split_seed=0 (the pretraining splits): test patients were fine-tuned on instead
    with pytest.raises(PatientOverlapError, match=r"used in the fine-tuning"):
        run_command("evaluate", [*mlflow, f"checkpoint={ft}", "evaluate.n_boot=10", "data.split_seed=0"],
                    run_dir=root / "ev_refused0")
    _, summary = run_command("evaluate", [*mlflow, f"checkpoint={ft}", "evaluate.n_boot=10",
                                          "evaluate.allow_pretrain_overlap=true"], run_dir=root / "ev_allowed")
    assert summary["pretrain_overlap"]["allowed_by"] == "evaluate.allow_pretrain_overlap=true"
    with pytest.raises(PatientOverlapError, match=r"explain\.allow_pretrain_overlap=true"):
        run_command("explain", [*mlflow, f"checkpoint={ft}"], run_dir=root / "ex_refused")


def test_same_splits_pass_the_guard(runs):
    """No false alarm: pretrain and finetune on the same split settings."""
    root, mlflow = runs
    pre = root / "pre" / "checkpoints" / "best.pt"
    _, summary = run_command("finetune", [*TINY, *mlflow, f"pretrained={pre}", "data.split_seed=0"],
                             run_dir=root / "ft_same")
    assert summary["pretrain_overlap"] is None
