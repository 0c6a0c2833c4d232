"""Pick which images to explain from the predictions table (design.md §8)."""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import pandas as pd

#: (label, predicted) of each outcome group.
GROUP_OUTCOMES = {"tp": (1, 1), "tn": (0, 0), "fp": (0, 1), "fn": (1, 0)}
_REQUIRED = ("image_id", "label", "predicted", "probability")


def _check_columns(pred_df: pd.DataFrame) -> None:
    missing = [c for c in _REQUIRED if c not in pred_df.columns]
    if missing:
        raise ValueError(f"predictions table lacks column(s) {missing}; it needs {list(_REQUIRED)} "
                         f"(write it with `cxrssl evaluate`/`finetune`, design.md §8)")


def outcome_group(pred_df: pd.DataFrame, group: str) -> pd.DataFrame:
    """Rows of one outcome group (rows with a NaN label belong to none)."""
    if group not in GROUP_OUTCOMES:
        raise ValueError(f"unknown group {group!r}; choose from {', '.join(GROUP_OUTCOMES)}")
    _check_columns(pred_df)
    label, predicted = GROUP_OUTCOMES[group]
    labelled = pred_df[pred_df["label"].notna() & pred_df["predicted"].notna()]
    keep = (labelled["label"].astype(int) == label) & (labelled["predicted"].astype(int) == predicted)
    return labelled[keep]


def _pick(rows: pd.DataFrame, n: int, rng: np.random.Generator) -> pd.DataFrame:
    """Random rows, one image per patient first (the original showed five different patients)."""
    shuffled = rows.iloc[rng.permutation(len(rows))]
    if "patient_id" not in shuffled.columns:
        return shuffled.head(n)
    first = shuffled.drop_duplicates("patient_id")
    if len(first) >= n:
        return first.head(n)
    rest = shuffled.drop(index=first.index)
    return pd.concat([first, rest.head(n - len(first))])


def select_groups(pred_df: pd.DataFrame, groups: Sequence[str] = ("tp", "tn", "fp", "fn"), per_group: int = 5,
                  seed: int = 0) -> dict[str, pd.DataFrame]:
    """`per_group` seeded random images per outcome group, preferring distinct patients.

    A group with fewer rows gives what it has (possibly none); each group draws from its own
    stream so adding a group does not change the others' choice.
    """
    _check_columns(pred_df)
    if pred_df["image_id"].duplicated().any():
        dup = pred_df.loc[pred_df["image_id"].duplicated(), "image_id"].iloc[0]
        raise ValueError(f"predictions table has duplicate image_id {dup!r}; keep one row per image")
    chosen = {}
    for group in groups:
        rows = outcome_group(pred_df, group)
        rng = np.random.default_rng([seed, list(GROUP_OUTCOMES).index(group)])
        chosen[group] = _pick(rows, per_group, rng).reset_index(drop=True)
    return chosen


def select_ids(pred_df: pd.DataFrame | None, image_ids: Iterable[str]) -> pd.DataFrame:
    """Rows for explicitly requested images, in the order given (ids absent from the table keep NaNs)."""
    ids = [str(i) for i in image_ids]
    frame = pd.DataFrame({"image_id": ids})
    if pred_df is None or len(pred_df) == 0:
        return frame
    table = pred_df.assign(image_id=pred_df["image_id"].astype(str)).drop_duplicates("image_id")
    return frame.merge(table, on="image_id", how="left")
