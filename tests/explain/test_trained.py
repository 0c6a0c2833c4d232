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


def flat_map(model, images):
    """A "method" whose maps carry no ranking: Spearman ρ = 0 with anything, a trivial "change"."""
    return torch.zeros(images.shape[0], *images.shape[-2:])


def test_sanity_verdicts_against_image_only_references(trained, true_positives):
    model, _ = trained
    images = true_positives[0][:12]
    gradcam = randomisation_sanity(model, images, "gradcam")
    levels = gradcam["levels"]
    assert levels["level"].unique().tolist()[0] == "head" and levels["level"].iloc[-1] == "all"
    assert levels["level"].nunique() >= 4  # cascade head → encoder stages → everything
    assert levels.loc[levels["level"] == "head", "spearman"].median() < 0.3  # a new head alone reshapes the map
    # the verdict compares the change under randomisation with the closest image-only reference
    assert gradcam["verdict"] == ("pass" if gradcam["similarity_randomised"] < gradcam["similarity_reference"]
                                  else "fail")
    assert gradcam["similarity_reference"] == max(gradcam["similarity_intensity"], gradcam["similarity_edges"])
    # an edge detector ignores the model: unchanged by randomisation and identical to the edge reference
    edges = randomisation_sanity(model, images, edge_detector, cascade=False)
    assert edges["verdict"] == "fail" and not edges["passes"] and edges["median_spearman"] > 0.99
    assert edges["method"] == "edge_detector" and set(edges["levels"]["level"]) == {"all"}
    assert edges["similarity_edges"] > 0.7  # central differences vs Sobel: alike, not identical
    # a flat map "changes" trivially (ρ = 0) — reported as degenerate, never a pass
    flat = randomisation_sanity(model, images, flat_map, cascade=False)
    assert flat["verdict"] == "degenerate" and not flat["passes"] and flat["flat_trained"] == 1.0


def test_reinitialise_changes_weights_and_leaves_the_original_alone(trained):
    model, _ = trained
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clone = copy.deepcopy(model)
    reinitialise(clone)
    changed = [k for k, v in clone.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])]
    weights = [k for k in before if k.endswith("weight")]
    assert set(weights) - set(changed) <= {k for k in weights if torch.all(before[k] == 1)}  # BN γ may reset to 1
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
