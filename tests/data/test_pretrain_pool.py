"""What pretrain sees (data.pretrain_pool) and the study's label-subset knobs (label_seed,
scale_val_labels): the pool never touches validation/test patients."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrssl.commands.finetune import finetune_table, label_seed
from cxrssl.data.pretrain_pool import eval_patients, pool_summary, pretrain_table
from cxrssl.data.schema import MetadataError


def _table(n: int = 60) -> pd.DataFrame:
    rows = []
    for p in range(n):
        split = "test" if p % 5 == 0 else "val" if p % 5 == 1 else "train"
        for k in range(2):
            label = np.nan if p % 7 == 3 else float(p % 3 == 0)
            rows.append({"image_id": f"P{p}_{k}", "path": f"/x/P{p}_{k}.png", "patient_id": f"P{p}", "age": 50.0,
                         "sex": "M", "view": "PA", "cardiomegaly": label, "split": split, "mask_path": np.nan})
    return pd.DataFrame(rows)


def _pool(n: int = 5, prefix: str = "U") -> pd.DataFrame:
    return pd.DataFrame([{"image_id": f"{prefix}{p}_0", "path": f"/x/{prefix}{p}.png", "patient_id": f"{prefix}{p}",
                          "age": 40.0, "sex": "F", "view": "AP", "cardiomegaly": np.nan, "split": np.nan,
                          "mask_path": np.nan, "ctr": 0.5} for p in range(n)])


def test_default_adds_the_pool_to_train_only():
    table = _table()
    out = pretrain_table({"source": "csv"}, table, pool=_pool())
    assert (out.loc[out["patient_id"].str.startswith("U"), "split"] == "train").all()
    assert out.loc[out["pretrain_only"], "cardiomegaly"].isna().all()
    for split in ("val", "test"):
        kept = out.loc[out["split"] == split, list(table.columns)]
        assert kept.equals(table[table["split"] == split])
    counts = pool_summary(out)
    assert counts["pool_patients"] == 5 and counts["pretrain_images"] == (table["split"] == "train").sum() + 5


def test_all_except_eval_takes_unlabelled_patients_outside_val_and_test():
    table = _table()
    out = pretrain_table({"source": "csv", "pretrain_pool": "all_except_eval"}, table, pool=_pool(0))
    held = eval_patients(table)
    moved = out[out["pretrain_only"]]
    assert len(moved) and not set(moved["patient_id"]) & held
    assert set(moved["patient_id"]) == set(table.loc[table["split"].ne("train") & table["cardiomegaly"].isna(),
                                                        "patient_id"]) - held
    assert not set(out.loc[out["split"] == "train", "patient_id"]) & held  # no evaluation patient is pretrained on


def test_train_mode_and_bad_input():
    table = _table()
    assert len(pretrain_table({"pretrain_pool": "train"}, table, pool=_pool())) == len(table)
    with pytest.raises(MetadataError, match="data.pretrain_pool"):
        pretrain_table({"pretrain_pool": "everything"}, table)
    with pytest.raises(MetadataError, match="patient-disjoint"):
        pretrain_table({"source": "csv"}, table, pool=_pool(3, prefix="P"))


def test_synthetic_source_brings_its_pool(tmp_path):
    from cxrssl.data.loaders import prepare_table

    cfg = {"source": "synthetic", "root": str(tmp_path / "set"), "val_fraction": 0.2, "test_fraction": 0.2,
           "split_seed": 0, "synthetic": {"preset": "easy", "n_patients": 12, "n_unlabelled_patients": 4,
                                          "native_size": 64, "workers": 1}}
    out = pretrain_table(cfg, prepare_table(cfg))
    pool = out[out["pretrain_only"]]
    assert pool["patient_id"].nunique() == 4 and (pool["split"] == "train").all()
    assert not set(pool["patient_id"]) & eval_patients(out)


def test_label_seed_and_scaled_validation():
    table = _table(200).dropna(subset=["cardiomegaly"])
    full = finetune_table(table, 0.2, seed=0)
    scaled = finetune_table(table, 0.2, seed=0, scale_val=True)
    n_val = lambda t: t.loc[t["split"] == "val", "patient_id"].nunique()  # noqa: E731
    assert n_val(full) == table.loc[table["split"] == "val", "patient_id"].nunique()
    assert n_val(scaled) == pytest.approx(0.2 * n_val(full), abs=2)
    assert scaled[scaled["split"] == "test"].equals(full[full["split"] == "test"])
    other = finetune_table(table, 0.2, seed=5)
    trained = lambda t: set(t.loc[t["split"] == "train", "patient_id"])  # noqa: E731
    assert trained(other) != trained(full)
    assert label_seed({"label_seed": None, "split_seed": 3}) == 3 and label_seed({"label_seed": 7, "split_seed": 3}) == 7


def test_pretrain_command_trains_on_the_pool(tmp_path):
    from cxrssl.commands.inprocess import run_command
    from tests.conftest import TINY

    _, summary = run_command("pretrain", [*TINY, "pretext=recon", "data.synthetic.n_unlabelled_patients=10",
                                          "trainer.limit_batches=2", f"mlflow.tracking_uri=sqlite:///{tmp_path}/m.db"],
                             run_dir=tmp_path / "run")
    data = summary["data"]
    assert data["pool_patients"] == 10 and data["pool_images"] >= 10
    splits = pd.read_csv(tmp_path / "run" / "splits.csv")
    pool = splits[splits["patient_id"].str.startswith("U")]
    assert len(pool) == data["pool_images"] and (pool["split"] == "train").all()
