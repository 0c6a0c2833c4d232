"""run_explanations end to end: selection, arrays, figures, tables and the returned summary."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from cxrssl.explain import METHODS, prior_map, run_explanations

CHEAP = dict(n_steps=4, n_samples=4, occlusion_window=16, occlusion_stride=8, occlusion_reference_size=None,
             faithfulness_steps=5, sanity_images=4, progress=False, image_rows=False)


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
        lungs = torch.ones_like(films["mask"][i])  # a whole-film "thorax": the CTR region's borders are the edges
        samples.append({"image": films["image"][i], "mask": mask, "image_id": f"film{i:02d}", "lung_mask": lungs})
    preds = pd.DataFrame({"image_id": [s["image_id"] for s in samples], "patient_id": [f"p{i}" for i in range(len(probs))],
                          "probability": probs, "label": labels, "predicted": (probs > 0.5).astype(int)})
    return samples, preds


def test_groups_arrays_figures_and_tables(trained, samples_and_predictions, tmp_path):
    model, _ = trained
    samples, preds = samples_and_predictions
    prior = prior_map(list(np.squeeze(np.stack([s["mask"].numpy() for s in samples]), 1)))
    summary = run_explanations(model, samples, preds, methods=METHODS, per_group=2, out_dir=tmp_path, batch_size=4,
                               priors={"heart": prior, "ctr": None}, sanity="cascade", **CHEAP)
    json.dumps(summary, allow_nan=False)  # the command stores it as JSON
    assert set(summary["groups"]) == {"tp", "tn", "fp", "fn"}
    for group, ids in summary["groups"].items():
        assert len(ids) == 2
        arrays = np.load(tmp_path / f"{group}_attributions.npz")
        assert arrays["image_ids"].tolist() == ids
        assert all(arrays[m].shape == (2, 64, 64) and arrays[m].dtype == np.float32 for m in METHODS)
        assert (tmp_path / f"{group}_gallery.png").stat().st_size > 10_000
    assert summary["files"]["images"] == []  # image_rows=False

    table = pd.read_csv(tmp_path / "localisation.csv")
    assert len(table) == len(METHODS) * 4 * 2 and (table["n"] == 2).all()  # two regions per method × group
    assert {"ceiling_pointing", "prior_pointing", "ceiling_energy", "prior_energy", "pointing_ci_low",
            "pointing_ci_high", "region", "grid"} <= set(table.columns)
    heart = table[table["region"] == "heart"]
    assert (heart["ceiling_energy"] >= heart["energy_inside"].fillna(0) - 1e-9).all()  # nothing beats the oracle
    assert heart["prior_energy"].between(0, 1).all()
    scored = heart.dropna(subset=["pointing_hit_rate"])
    assert ((scored["pointing_ci_low"] <= scored["pointing_hit_rate"])
            & (scored["pointing_hit_rate"] <= scored["pointing_ci_high"])).all()
    assert summary["layer"] == "encoder.net.layer4" and summary["grids"]["gradcam"] == [8, 8]
    assert summary["pointing_tolerance_px"] == 4  # 15 px at 224 → 4 px at 64
    per_image = pd.read_csv(tmp_path / "per_image.csv")
    no_mask = per_image[~per_image["has_mask"]]
    assert no_mask["pointing_hit"].isna().all() and per_image.loc[per_image["has_mask"], "mask_area"].gt(0).all()
    assert per_image.loc[per_image["has_mask"], "energy_inside_ctr"].notna().any()  # lung masks → CTR region

    faith = pd.read_csv(tmp_path / "faithfulness.csv")
    for b in ("zero", "blur"):
        for column in (f"deletion_auc_{b}", f"insertion_auc_{b}", f"random_deletion_auc_{b}",
                       f"baseline_probability_{b}"):
            assert faith[column].between(0, 1).all(), column

    sanity = pd.read_csv(tmp_path / "sanity.csv")
    assert sanity["method"].tolist() == list(METHODS) and (sanity["n_images"] == 4).all()
    assert set(sanity["verdict"]) <= {"pass", "fail", "degenerate"} and sanity["passes"].dtype == bool
    assert (sanity["passes"] == (sanity["verdict"] == "pass")).all()
    assert sanity["similarity_reference"].between(0, 1).all()
    assert summary["sanity"][0]["method"] == "gradcam" and (tmp_path / "sanity_cascade.png").is_file()


def test_explicit_ids_and_switches(trained, samples_and_predictions, tmp_path):
    model, _ = trained
    samples, preds = samples_and_predictions
    index = {s["image_id"]: i for i, s in enumerate(samples)}
    summary = run_explanations(model, samples, None, methods=["gradcam"], image_ids=["film07", "film03"],
                               out_dir=tmp_path, sanity="off", faithfulness=False, index=index,
                               **{**CHEAP, "image_rows": True})
    assert len(summary["files"]["images"]) == 2 and all(p.endswith(".png") for p in summary["files"]["images"])
    assert summary["groups"] == {"selected": ["film07", "film03"]}
    assert not (tmp_path / "sanity.csv").exists() and summary["sanity"] == []
    assert summary["faithfulness"] == [] and not (tmp_path / "faithfulness.csv").exists()  # switched off


def test_bad_requests_name_the_problem(trained, samples_and_predictions, tmp_path):
    model, _ = trained
    samples, preds = samples_and_predictions
    with pytest.raises(KeyError, match="image_id 'nowhere' is not in the dataset"):
        run_explanations(model, samples, preds, methods=["saliency"], image_ids=["nowhere"], out_dir=tmp_path,
                         **CHEAP)
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['lime'\]"):
        run_explanations(model, samples, preds, methods=["lime"], out_dir=tmp_path, **CHEAP)
