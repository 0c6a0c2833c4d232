"""What ``pretrain`` trains on: the labelled training split plus unlabelled images (``data.pretrain_pool``).

Self-supervision pays off when it sees more images than the labelled task has; pretraining on only
the training split (the old behaviour) is not the premise. But it must never see the patients the
fine-tuned model is later *validated or tested* on, or the comparison with a random-init control is
biased. So the pool is built from the evaluation split assignment (the same ``prepare_table``
splits fine-tuning uses) and every pool row goes into ``split="train"``; ``val`` stays as it is, for
monitoring only. Modes:

* ``train_and_pool`` (default): the training split plus the source's own unlabelled pool when it
  has one (the synthetic ``pool.csv``: other patients, ids ``U…``); real sources: the training split.
* ``all_except_eval``: every image whose patient has no labelled image in ``val`` or ``test`` (for
  real sources, e.g. all of NIH outside the cohort's val/test patients), plus the source pool.
* ``train``: the training split only.

Rows added from outside the training split carry ``pretrain_only=True``. Their patient ids are what
the pretrain/finetune patient guard records: none of them may appear in fine-tuning's val/test.
"""
from __future__ import annotations

from typing import Any

import pandas as pd

from cxrssl.data.schema import MetadataError
from cxrssl.data.splits import check_no_leakage

MODES = ("train_and_pool", "all_except_eval", "train")


def eval_patients(table: pd.DataFrame, label: str = "cardiomegaly") -> set[str]:
    """Patients with at least one labelled image in ``val`` or ``test``."""
    held = table["split"].isin(("val", "test")) & table[label].notna()
    return set(table.loc[held, "patient_id"].astype(str))


def source_pool(data_cfg: Any) -> pd.DataFrame | None:
    """The source's own unlabelled pool (only the synthetic source has one today)."""
    if str(data_cfg.get("source")) != "synthetic":
        return None
    from cxrssl.data.sources.synthetic import load_synthetic_pool

    return load_synthetic_pool(data_cfg)


def pretrain_table(data_cfg: Any, table: pd.DataFrame, pool: pd.DataFrame | None = None) -> pd.DataFrame:
    """``table`` (with splits) turned into the pretraining table for ``data.pretrain_pool``.

    ``pool`` defaults to :func:`source_pool`; pass one to use another unlabelled set.
    """
    mode = str(data_cfg.get("pretrain_pool") or "train_and_pool")
    if mode not in MODES:
        raise MetadataError(f"data.pretrain_pool={mode!r}: choose one of {list(MODES)}")
    out = table.copy()
    out["pretrain_only"] = False
    if mode == "train":
        return out
    held_out = eval_patients(out)
    if mode == "all_except_eval":  # unlabelled rows of non-evaluation patients join training
        free = ~out["split"].eq("train") & ~out["patient_id"].astype(str).isin(held_out)
        out.loc[free, "split"] = "train"
        out.loc[free, "pretrain_only"] = True
        out.loc[free, "cardiomegaly"] = float("nan")  # never a label source for pretraining
    pool = source_pool(data_cfg) if pool is None else pool
    if pool is not None and len(pool):
        clash = sorted(set(pool["patient_id"].astype(str)) & set(out["patient_id"].astype(str)))
        if clash:
            raise MetadataError(f"the unlabelled pool shares {len(clash)} patient(s) with the labelled cohort "
                                f"(e.g. {clash[:5]}); the pool must be patient-disjoint")
        extra = pool.assign(split="train", pretrain_only=True, cardiomegaly=float("nan"))
        out = pd.concat([out, extra], ignore_index=True)
    check_no_leakage(out)
    return out


def pool_summary(table: pd.DataFrame) -> dict[str, int]:
    """Counts for summary.json: images/patients pretrained on, and how many came from the pool."""
    train = table[table["split"] == "train"]
    extra = train[train.get("pretrain_only", pd.Series(False, index=train.index)).astype(bool)]
    return {"pretrain_images": len(train), "pretrain_patients": int(train["patient_id"].nunique()),
            "pool_images": len(extra), "pool_patients": int(extra["patient_id"].nunique())}
