"""Patient-level splits and label-fraction subsets.

A patient's images always land in one split: images of one person are near-duplicates for a
model, and leaking them across splits inflates test AUROC. Every random choice is a hash of
``(seed, patient_id)``, so results depend only on the seed and the patients, never on row order.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pandas as pd

from cxrssl.data.schema import SPLITS, MetadataError

_STRATA = ("positive", "negative", "unlabelled")


def patient_keys(patient_ids: pd.Index | pd.Series, seed: int) -> pd.Series:
    """A uniform pseudo-random number in [0, 1) per patient id, fixed by ``seed``."""
    ids = pd.Index(patient_ids).astype(str)
    keys = [int.from_bytes(hashlib.blake2b(f"{seed}:{pid}".encode(), digest_size=8).digest(), "big")
            for pid in ids]
    return pd.Series(np.asarray(keys, dtype=np.float64) / 2.0**64, index=ids)


def patient_strata(table: pd.DataFrame, label: str = "cardiomegaly") -> pd.Series:
    """Per patient: 'positive' if any image is positive, else 'negative' if any is labelled."""
    labels = table.groupby(table["patient_id"].astype(str))[label]
    best = labels.max()
    return best.map({1.0: "positive", 0.0: "negative"}).fillna("unlabelled")


def _interleaved_order(strata: pd.Series, seed: int) -> pd.Index:
    """Patients ordered so that every prefix holds the strata in their overall proportions."""
    keys = patient_keys(strata.index, seed)
    position = pd.Series(0.0, index=strata.index)
    for stratum in _STRATA:
        members = keys[strata == stratum].sort_values()
        position[members.index] = (np.arange(len(members)) + 0.5) / max(len(members), 1)
    frame = pd.DataFrame({"position": position, "key": keys})
    return frame.sort_values(["position", "key"]).index


def assign_splits(table: pd.DataFrame, val_fraction: float, test_fraction: float,
                  seed: int) -> pd.DataFrame:
    """Fill NaN ``split`` values patient by patient; official splits are kept.

    A patient with an official split in any row gets it for all their rows. Splits that the
    source already provides are not drawn again (NIH's official test list means only val is
    carved from the rest). Fractions are of the patients being split; stratified by
    cardiomegaly; a non-zero fraction gets at least one patient when there are enough."""
    for name, value in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 <= float(value) < 1.0:
            raise MetadataError(f"data.{name} must be in [0, 1), got {value}")
    out = table.copy()
    out["split"] = out["split"].astype(object).where(out["split"].notna(), np.nan)
    pid = out["patient_id"].astype(str)
    official = out.loc[out["split"].notna()].groupby(pid[out["split"].notna()])["split"]
    conflicting = official.nunique()
    if (conflicting > 1).any():
        raise MetadataError("official split puts patient(s) in several splits: "
                            f"{conflicting.index[conflicting > 1][:10].tolist()}")
    known = official.first()
    out["split"] = out["split"].fillna(pid.map(known))
    pool = out.loc[out["split"].isna()]
    if len(pool):
        given = set(known.unique())
        wanted = [(s, f) for s, f in (("test", test_fraction), ("val", val_fraction))
                  if s not in given and f > 0]
        order = _interleaved_order(patient_strata(pool), seed)
        split_of = pd.Series("train", index=order, dtype=object)
        start = 0
        for name, fraction in wanted:
            count = int(round(fraction * len(order)))
            if count == 0 and len(order) > len(wanted):
                count = 1
            split_of.iloc[start:start + count] = name
            start += count
        out.loc[pool.index, "split"] = pid[pool.index].map(split_of).to_numpy()
    check_no_leakage(out)
    return out


def check_no_leakage(table: pd.DataFrame) -> None:
    """Raise MetadataError naming every patient that appears in more than one split."""
    labelled = table[table["split"].notna()]
    counts = labelled.groupby(labelled["patient_id"].astype(str))["split"].nunique()
    leaked = counts.index[counts > 1].tolist()
    if leaked:
        raise MetadataError(f"patient leakage: {len(leaked)} patient(s) in more than one split: "
                            f"{leaked[:20]}")
    bad = set(labelled["split"].unique()) - set(SPLITS)
    if bad:
        raise MetadataError(f"unknown split name(s) {sorted(bad)}; allowed {list(SPLITS)}")


def label_subset(table: pd.DataFrame, fraction: float, seed: int,
                 label: str = "cardiomegaly", split: str = "train") -> pd.DataFrame:
    """Keep ``fraction`` of the training patients (stratified by ``label``); other splits untouched.

    Rows with ``split == split`` (default "train"; "val" scales the validation labels the same way)
    are subsampled (all rows when no split is set). Per stratum the
    patients with the smallest hash keys are kept, at least one per labelled stratum, so a smaller
    fraction is a subset of a larger one for the same seed and the choice depends on nothing else."""
    if not 0.0 < float(fraction) <= 1.0:
        raise MetadataError(f"label fraction must be in (0, 1], got {fraction}")
    if fraction >= 1.0:
        return table.copy()
    is_train = table["split"].eq(split) if table["split"].notna().any() else \
        pd.Series(True, index=table.index)
    train = table[is_train]
    strata = patient_strata(train, label)
    keys = patient_keys(strata.index, seed)
    kept: list[str] = []
    for stratum in _STRATA:
        members = keys[strata == stratum].sort_values()
        count = int(round(fraction * len(members)))
        if stratum != "unlabelled" and len(members):
            count = max(count, 1)
        kept.extend(members.index[:count])
    keep_rows = ~is_train | table["patient_id"].astype(str).isin(set(kept))
    return table[keep_rows].copy()


def split_table_artifact(table: pd.DataFrame) -> pd.DataFrame:
    """The (image_id, patient_id, split) table written as a run artifact."""
    return table[["image_id", "patient_id", "split"]].reset_index(drop=True)
