import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from cxrssl.data.schema import MetadataError
from cxrssl.data.splits import (assign_splits, check_no_leakage, label_subset,
                                split_table_artifact)


def make_table(n_patients: int = 200, per_patient: int = 3, positive_every: int = 10,
               seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_patients):
        for k in range(rng.integers(1, per_patient + 1)):
            rows.append({"image_id": f"i{p}_{k}", "path": f"/x/{p}_{k}.png", "patient_id": f"P{p}",
                         "age": 50.0, "sex": "M", "view": "PA",
                         "cardiomegaly": float(p % positive_every == 0), "split": np.nan,
                         "mask_path": np.nan})
    table = pd.DataFrame(rows)
    table["split"] = table["split"].astype(object)
    return table


def test_patient_level_stratified_and_seeded():
    table = make_table()
    out = assign_splits(table, val_fraction=0.1, test_fraction=0.2, seed=3)
    check_no_leakage(out)
    assert out["split"].notna().all()
    patients = out.groupby("patient_id")["split"].first().value_counts()
    assert patients["test"] == 40 and patients["val"] == 20 and patients["train"] == 140
    positives = out[out["cardiomegaly"] == 1].groupby("patient_id")["split"].first().value_counts()
    assert positives["test"] == 4 and positives["val"] == 2  # 20 positive patients, proportional
    again = assign_splits(table.sample(frac=1.0, random_state=1), 0.1, 0.2, seed=3)
    pd.testing.assert_series_equal(out.set_index("image_id")["split"].sort_index(),
                                   again.set_index("image_id")["split"].sort_index())
    other = assign_splits(table, 0.1, 0.2, seed=4)
    assert not other["split"].equals(out["split"])


def test_official_splits_kept_and_not_redrawn():
    table = make_table(100)
    official_test = table["patient_id"].isin([f"P{i}" for i in range(10)])
    table.loc[official_test, "split"] = "test"
    # one image of P10 is officially 'train': the patient's other images must follow it
    first_p10 = table.index[table["patient_id"] == "P10"][0]
    table.loc[first_p10, "split"] = "train"
    out = assign_splits(table, val_fraction=0.2, test_fraction=0.3, seed=0)
    check_no_leakage(out)
    assert (out.loc[official_test, "split"] == "test").all()
    assert set(out.loc[~official_test, "split"]) == {"train", "val"}  # no new test patients
    assert (out.loc[out["patient_id"] == "P10", "split"] == "train").all()


def test_conflicting_official_split_and_leakage_name_patients():
    table = make_table(20)
    rows = table.index[table["patient_id"] == "P3"]
    if len(rows) < 2:
        table = pd.concat([table, table.loc[rows].assign(image_id="extra")], ignore_index=True)
        rows = table.index[table["patient_id"] == "P3"]
    table.loc[rows[0], "split"], table.loc[rows[1], "split"] = "train", "test"
    with pytest.raises(MetadataError, match="P3"):
        assign_splits(table, 0.1, 0.1, 0)
    with pytest.raises(MetadataError, match=r"leakage.*P3"):
        check_no_leakage(table)


def test_tiny_pool_still_gets_val_and_test():
    out = assign_splits(make_table(5, per_patient=1), 0.1, 0.1, seed=0)
    assert set(out["split"]) == {"train", "val", "test"}


@settings(max_examples=25, deadline=None)
@given(n=st.integers(3, 60), val=st.floats(0, 0.4), test=st.floats(0, 0.4), seed=st.integers(0, 99))
def test_never_leaks(n, val, test, seed):
    out = assign_splits(make_table(n, seed=seed), val, test, seed)
    check_no_leakage(out)
    assert out["split"].notna().all()


def test_label_subset_nested_stratified_and_only_train():
    table = assign_splits(make_table(400), 0.1, 0.1, seed=0)
    train_patients = table.loc[table["split"] == "train", "patient_id"].unique()
    subsets = {f: label_subset(table, f, seed=7) for f in (0.01, 0.1, 0.5)}
    for fraction, subset in subsets.items():
        assert (subset["split"] != "train").sum() == (table["split"] != "train").sum()
        kept = subset.loc[subset["split"] == "train", "patient_id"].unique()
        assert abs(len(kept) - fraction * len(train_patients)) <= 2
        assert (subset.loc[subset["split"] == "train", "cardiomegaly"] == 1).any()
        # a patient is either fully kept or fully dropped
        full = table[table["patient_id"].isin(kept)]
        assert len(full) == len(subset[subset["patient_id"].isin(kept)])
    ids = {f: set(s.loc[s["split"] == "train", "patient_id"]) for f, s in subsets.items()}
    assert ids[0.01] < ids[0.1] < ids[0.5]
    shuffled = label_subset(table.sample(frac=1.0, random_state=2), 0.1, seed=7)
    assert set(shuffled["image_id"]) == set(subsets[0.1]["image_id"])
    assert set(label_subset(table, 0.1, seed=8)["image_id"]) != set(subsets[0.1]["image_id"])
    assert len(label_subset(table, 1.0, seed=7)) == len(table)
    with pytest.raises(MetadataError, match="fraction"):
        label_subset(table, 0.0, seed=7)


def test_split_table_artifact_columns():
    table = assign_splits(make_table(10), 0.2, 0.2, seed=0)
    artifact = split_table_artifact(table)
    assert list(artifact.columns) == ["image_id", "patient_id", "split"]
    assert len(artifact) == len(table)


def test_an_official_split_on_one_film_carries_the_whole_patient():
    """A patient officially in 'test' by one film: all their films are test (a drawn split for the
    other films would put the patient on both sides)."""
    table = make_table(60)
    counts = table.groupby("patient_id").size()
    multi = [p for p in counts.index if counts[p] >= 2][:3]
    assert multi, "fixture must have patients with several films"
    for patient in multi:
        first = table.index[table["patient_id"] == patient][0]
        table.loc[first, "split"] = "test"
    out = assign_splits(table, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert (out.loc[out["patient_id"].isin(multi), "split"] == "test").all()
    assert set(out.loc[~out["patient_id"].isin(multi), "split"]) == {"train", "val"}
