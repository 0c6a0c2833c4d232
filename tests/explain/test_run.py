"""run_explanations end to end: selection, arrays, figures, tables and the returned summary."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cxrssl.explain import METHODS, run_explanations

CHEAP = dict(n_steps=4, n_samples=4, occlusion_window=16, occlusion_stride=8, occlusion_reference_size=None,
             faithfulness_steps=5, sanity_images=4, progress=False)


@pytest.fixture(scope="module")
def samples_and_predictions(trained):
    model, films = trained
    with torch.no_grad():
        probs = torch.sigmoid(model(films["image"])).numpy()
    labels = films["label"].numpy()
    flip = np.r_[np.flatnonzero(labels == 1)[:3], np.flatnonzero(labels == 0)[:3]]
    probs[flip] = 1 - probs[flip]  # wrong calls, so every outcome group has members
    samples = []
    for i in range(len(probs)):
        mask = films["mask"][i] if i % 6 else torch.full_like(films["mask"][i], float("nan"))  # some rows lack masks
        samples.append({"image": films["image"][i], "mask": mask, "image_id": f"film{i:02d}"})
    preds = pd.DataFrame({"image_id": [s["image_id"] for s in samples], "patient_id": [f"p{i}" for i in range(len(probs))],
                          "probability": probs, "label": labels, "predicted": (probs > 0.5).astype(int)})
    return samples, preds


def test_groups_arrays_figures_and_tables(trained, samples_and_predictions, tmp_path):
    model, _ = trained
    samples, preds = samples_and_predictions
    summary = run_explanations(model, samples, preds, methods=METHODS, per_group=2, out_dir=tmp_path, batch_size=4,
                               **CHEAP)
    json.dumps(summary, allow_nan=False)  # the command stores it as JSON
    assert set(summary["groups"]) == {"tp", "tn", "fp", "fn"}
    for group, ids in summary["groups"].items():
        assert len(ids) == 2
        arrays = np.load(tmp_path / f"{group}_attributions.npz")
        assert arrays["image_ids"].tolist() == ids
        assert all(arrays[m].shape == (2, 64, 64) and arrays[m].dtype == np.float32 for m in METHODS)
        assert (tmp_path / f"{group}_gallery.png").stat().st_size > 10_000
    assert len(summary["files"]["images"]) == 8 and all(p.endswith(".png") for p in summary["files"]["images"])

    table = pd.read_csv(tmp_path / "localisation.csv")
    assert len(table) == len(METHODS) * 4 and (table["n"] == 2).all()
    assert list(table.columns) == ["method", "group", "n", "n_with_mask", "pointing_hit_rate", "energy_inside",
                                   "mask_area", "deletion_auc", "insertion_auc"]
    assert table["deletion_auc"].between(0, 1).all() and table["insertion_auc"].between(0, 1).all()
    per_image = pd.read_csv(tmp_path / "per_image.csv")
    no_mask = per_image[~per_image["has_mask"]]
    assert no_mask["pointing_hit"].isna().all() and per_image.loc[per_image["has_mask"], "mask_area"].gt(0).all()

    sanity = pd.read_csv(tmp_path / "sanity.csv")
    assert sanity["method"].tolist() == list(METHODS) and (sanity["n_images"] == 4).all()
    assert sanity["passes"].dtype == bool and sanity["median_spearman"].between(-1, 1).all()
    assert summary["sanity"][0]["method"] == "gradcam"


def test_explicit_ids_and_switches(trained, samples_and_predictions, tmp_path):
    model, _ = trained
    samples, preds = samples_and_predictions
    index = {s["image_id"]: i for i, s in enumerate(samples)}
    summary = run_explanations(model, samples, None, methods=["gradcam"], image_ids=["film07", "film03"],
                               out_dir=tmp_path, sanity=False, faithfulness=False, index=index, **CHEAP)
    assert summary["groups"] == {"selected": ["film07", "film03"]}
    assert not (tmp_path / "sanity.csv").exists() and summary["sanity"] == []
    assert summary["localisation"][0]["deletion_auc"] is None  # faithfulness switched off


def test_bad_requests_name_the_problem(trained, samples_and_predictions, tmp_path):
    model, _ = trained
    samples, preds = samples_and_predictions
    with pytest.raises(KeyError, match="image_id 'nowhere' is not in the dataset"):
        run_explanations(model, samples, preds, methods=["saliency"], image_ids=["nowhere"], out_dir=tmp_path,
                         **CHEAP)
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['lime'\]"):
        run_explanations(model, samples, preds, methods=["lime"], out_dir=tmp_path, **CHEAP)
