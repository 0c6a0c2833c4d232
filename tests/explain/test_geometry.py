"""Floors and ceilings of localisation scores: layer by resolution, oracle maps at a grid, the prior,
the CTR region, tolerance scaling and Wilson CIs — the facts that explain Grad-CAM's 0.00 at 64 px."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from cxrssl.explain import (choose_layer, ctr_region, localisation_scores, oracle_map, prior_map, scaled_tolerance,
                            score_image, stage_grids, summarise_localisation, wilson_interval)


@pytest.fixture
def issue_heart():
    """The heart of the issue's example film: rows 29–45, columns 26–44 of a 64 px image."""
    mask = np.zeros((64, 64), np.float32)
    mask[29:46, 26:45] = 1
    return mask


def test_oracle_at_2x2_cannot_point_at_the_heart_but_4x4_can(issue_heart):
    # Grad-CAM on a stride-32 stage at 64 px is 2×2: even the true mask drawn at that grid misses.
    assert localisation_scores(oracle_map(issue_heart, (2, 2)), issue_heart)["pointing_hit"] == 0.0
    assert localisation_scores(oracle_map(issue_heart, (4, 4)), issue_heart)["pointing_hit"] == 1.0
    full = localisation_scores(oracle_map(issue_heart, None), issue_heart)
    assert full["pointing_hit"] == 1.0 and full["energy_inside"] == pytest.approx(1.0)
    coarse = localisation_scores(oracle_map(issue_heart, (2, 2)), issue_heart)["energy_inside"]
    assert full["energy_inside"] > localisation_scores(oracle_map(issue_heart, (4, 4)), issue_heart)["energy_inside"] > coarse


def test_pointing_is_skipped_below_4x4_and_summarised_with_wilson_ci(issue_heart):
    attr = oracle_map(issue_heart, (2, 2))
    row = score_image(attr, {"heart": issue_heart, "ctr": None}, grid=(2, 2), tolerance=0, priors={})
    assert np.isnan(row["pointing_hit"]) and np.isnan(row["ceiling_pointing"]) and row["energy_inside"] > 0
    assert np.isnan(row["energy_inside_ctr"])  # no lung mask → no CTR region
    rows = [dict(score_image(oracle_map(issue_heart, (4, 4)), {"heart": issue_heart}, grid=(4, 4), tolerance=0,
                             priors={"heart": issue_heart}), method="gradcam", group="tp") for _ in range(3)]
    table = summarise_localisation(pd.DataFrame(rows), {"gradcam": (4, 4)}, 0)
    heart = table[table["region"] == "heart"].iloc[0]
    assert heart["pointing_hit_rate"] == 1.0 and heart["ceiling_pointing"] == 1.0 and heart["prior_pointing"] == 1.0
    low, high = wilson_interval(3, 3)
    assert heart["pointing_ci_low"] == pytest.approx(low) and high == pytest.approx(1.0) and 0.3 < low < 0.5
    skipped = summarise_localisation(pd.DataFrame(rows), {"gradcam": (2, 2)}, 0)
    assert "pointing skipped: 2×2 grid < 4×4" in skipped["note"].iloc[0]


def test_layer_chosen_by_resolution():
    from cxrssl.models import Classifier, create_encoder

    model = Classifier(create_encoder("resnet18")).eval()
    grids = dict(stage_grids(model, 64))
    assert grids["encoder.net.layer4"] == (2, 2) and grids["encoder.net.layer2"] == (8, 8)
    assert choose_layer(model, 64) == ("encoder.net.layer2", (8, 8))   # deepest with a grid ≥ 7×7
    assert choose_layer(model, 128) == ("encoder.net.layer3", (8, 8))
    assert choose_layer(model, 224) == ("encoder.net.layer4", (7, 7))


def test_tolerance_prior_ctr_region_and_wilson():
    assert scaled_tolerance(224) == 15 and scaled_tolerance(128) == 9 and scaled_tolerance(64) == 4
    assert scaled_tolerance(64, 3, None) == 3
    masks = [np.zeros((8, 8)), np.zeros((8, 8)), np.full((8, 8), np.nan)]
    masks[0][2:4, 2:4] = 1
    masks[1][2:4, 3:5] = 1
    prior = prior_map(masks)  # the NaN (no mask) row is ignored
    assert prior[2, 3] == 1.0 and prior[2, 2] == 0.5 and prior[0, 0] == 0.0
    heart = np.zeros((40, 40))
    heart[18:26, 16:24] = 1
    lungs = np.zeros((40, 40))
    lungs[8:30, 6:16] = 1
    lungs[8:30, 24:35] = 1
    lungs[20, 4:37] = 1  # the widest row: inner thoracic diameter from column 4 to 36
    region = ctr_region(heart, lungs, radius=2)
    assert region[20, 4] == 1 and region[20, 36] == 1 and region[22, 20] == 1 and region[5, 20] == 0
    assert ctr_region(heart, None) is None
    low, high = wilson_interval(0, 5)
    assert low == 0.0 and 0.4 < high < 0.5 and np.isnan(wilson_interval(0, 0)[0])
