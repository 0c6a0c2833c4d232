"""select_groups / select_ids on a predictions table built here."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from cxrssl.explain import outcome_group, select_groups, select_ids


@pytest.fixture
def predictions():
    rng = np.random.default_rng(3)
    n = 80
    label = rng.integers(0, 2, n).astype(float)
    label[:4] = np.nan  # unlabelled rows belong to no group
    predicted = rng.integers(0, 2, n)
    return pd.DataFrame({"image_id": [f"img{i}" for i in range(n)], "patient_id": [f"p{i // 4}" for i in range(n)],
                         "probability": rng.random(n), "label": label, "predicted": predicted})


def test_groups_hold_the_right_outcomes(predictions):
    chosen = select_groups(predictions, per_group=5, seed=0)
    outcomes = {"tp": (1, 1), "tn": (0, 0), "fp": (0, 1), "fn": (1, 0)}
    for group, rows in chosen.items():
        assert len(rows) == 5
        assert (rows["label"] == outcomes[group][0]).all() and (rows["predicted"] == outcomes[group][1]).all()
        assert rows["patient_id"].is_unique  # distinct patients preferred while enough exist
    assert not outcome_group(predictions, "tp")["label"].isna().any()


def test_seeded_and_reproducible(predictions):
    first = select_groups(predictions, per_group=3, seed=7)
    again = select_groups(predictions, per_group=3, seed=7)
    other = select_groups(predictions, per_group=3, seed=8)
    assert all(first[g]["image_id"].tolist() == again[g]["image_id"].tolist() for g in first)
    assert any(first[g]["image_id"].tolist() != other[g]["image_id"].tolist() for g in first)
    # adding a group does not reshuffle the others
    only_tp = select_groups(predictions, groups=("tp",), per_group=3, seed=7)
    assert only_tp["tp"]["image_id"].tolist() == first["tp"]["image_id"].tolist()


def test_small_groups_fall_back_to_repeated_patients(predictions):
    same_patient = predictions.assign(patient_id="p0")
    rows = select_groups(same_patient, groups=("tp",), per_group=4)["tp"]
    assert len(rows) == 4 and rows["image_id"].is_unique
    tiny = predictions.head(6)
    sizes = {g: len(r) for g, r in select_groups(tiny, per_group=5).items()}
    assert sum(sizes.values()) == tiny["label"].notna().sum()


def test_bad_tables_are_rejected(predictions):
    with pytest.raises(ValueError, match=r"lacks column\(s\) \['predicted'\]"):
        select_groups(predictions.drop(columns="predicted"))
    with pytest.raises(ValueError, match="duplicate image_id 'img0'"):
        select_groups(pd.concat([predictions, predictions.head(1)]))
    with pytest.raises(ValueError, match="unknown group 'tpr'"):
        select_groups(predictions, groups=("tpr",))


def test_explicit_ids_keep_order_and_unknown_ids(predictions):
    rows = select_ids(predictions, ["img9", "img2", "nowhere"])
    assert rows["image_id"].tolist() == ["img9", "img2", "nowhere"]
    assert rows["probability"].iloc[0] == predictions.set_index("image_id").loc["img9", "probability"]
    assert np.isnan(rows["probability"].iloc[2])
