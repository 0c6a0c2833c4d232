"""Behaviour on a classifier that really learnt the synthetic heart: maps land on the heart, are
faithful (deletion < insertion), and pass/fail the randomisation sanity check as they should."""
from __future__ import annotations

import copy

import numpy as np
import torch

from cxrssl.explain import (compute_attributions, deletion_insertion_auc, deletion_insertion_curves,
                            localisation_scores, randomisation_sanity, reinitialise)


def test_gradcam_points_at_the_heart_more_than_chance(trained, true_positives):
    model, _ = trained
    images, masks = true_positives
    maps = compute_attributions(model, images, "gradcam", progress=False)
    scores = [localisation_scores(a, m) for a, m in zip(maps, masks)]
    area = np.mean([s["mask_area"] for s in scores])
    energy = np.nanmean([s["energy_inside"] for s in scores])
    hits = np.mean([s["pointing_hit"] for s in scores])
    assert energy > 2 * area, (energy, area)
    assert hits > 3 * area, (hits, area)


def test_deletion_falls_faster_than_insertion_rises(trained, true_positives):
    model, _ = trained
    images, _ = true_positives
    maps = compute_attributions(model, images, "gradcam", progress=False)
    deletion, insertion = deletion_insertion_auc(model, images, maps, steps=10)
    assert deletion.shape == insertion.shape == (len(images),)
    assert ((0 <= deletion) & (deletion <= 1)).all() and ((0 <= insertion) & (insertion <= 1)).all()
    assert np.median(deletion) < np.median(insertion)
    # a random map is a worse deletion ordering than Grad-CAM's
    noise = np.random.default_rng(0).random(maps.shape).astype(np.float32)
    random_deletion, _ = deletion_insertion_auc(model, images, noise, steps=10)
    assert deletion.mean() < random_deletion.mean()
    # curve endpoints: nothing removed = the model's own probability; zero baseline also works
    curves_del, curves_ins = deletion_insertion_curves(model, images[:2], maps[:2], steps=4, baseline="zero")
    with torch.no_grad():
        probs = torch.sigmoid(model(images[:2])).numpy()
    np.testing.assert_allclose(curves_del[:, 0], probs, atol=1e-5)
    np.testing.assert_allclose(curves_ins[:, -1], probs, atol=1e-5)


def edge_detector(model, images):
    """A "method" that ignores the model entirely: image gradient magnitude."""
    gy, gx = torch.gradient(images[:, 0], dim=(1, 2))
    return (gx ** 2 + gy ** 2).sqrt()


def test_sanity_check_passes_gradcam_and_fails_model_independent_maps(trained, true_positives):
    model, _ = trained
    images = true_positives[0][:12]
    # On these films a random network's Grad-CAM still follows bright structure (heart, ribs), so
    # full randomisation leaves a moderate correlation (~0.45); an edge detector stays at ~1.
    gradcam = randomisation_sanity(model, images, "gradcam", threshold=0.75)
    assert gradcam["passes"] and gradcam["median_spearman_abs"] < 0.75
    levels = gradcam["levels"]
    assert levels["level"].unique().tolist()[0] == "head" and levels["level"].iloc[-1] == "all"
    assert levels["level"].nunique() >= 4  # cascade head → encoder stages → everything
    assert levels.loc[levels["level"] == "head", "spearman"].median() < 0.3  # a new head alone reshapes the map
    edges = randomisation_sanity(model, images, edge_detector, threshold=0.75, cascade=False)
    assert not edges["passes"] and edges["median_spearman"] > 0.99
    assert edges["method"] == "edge_detector" and set(edges["levels"]["level"]) == {"all"}


def test_reinitialise_changes_weights_and_leaves_the_original_alone(trained):
    model, _ = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clone = copy.deepcopy(model)
    reinitialise(clone)
    changed = [k for k, v in clone.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    weights = [k for k in before if k.endswith("weight")]
    assert set(weights) - set(changed) <= {k for k in weights if torch.all(before[k] == 1)}  # BN γ may reset to 1
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
