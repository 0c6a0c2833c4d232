"""Pointing game, energy inside the mask and their chance level, on hand-made maps."""
from __future__ import annotations

import numpy as np
import pytest

from cxrssl.explain import energy_inside, has_mask, localisation_scores, mask_area_share, pointing_game


@pytest.fixture
def mask():
    m = np.zeros((20, 20), np.float32)
    m[5:10, 5:10] = 1
    return m


def test_pointing_game_hits_misses_and_tolerance(mask):
    attr = np.zeros((20, 20))
    attr[7, 7] = 1.0
    assert pointing_game(attr, mask)
    attr = np.zeros((20, 20))
    attr[12, 7] = 1.0  # three pixels below the mask
    assert not pointing_game(attr, mask)
    assert pointing_game(attr, mask, tolerance=3)
    assert not pointing_game(attr, mask, tolerance=2)
    assert not pointing_game(np.ones((20, 20)), mask)  # a flat map points nowhere


def test_plateau_peak_uses_its_centroid(mask):
    attr = np.zeros((20, 20))
    attr[6:9, 0:15] = 1.0  # plateau from the border across the mask: centroid (7, 7) is inside
    assert pointing_game(attr, mask)


def test_energy_inside_counts_positive_mass_only(mask):
    attr = np.zeros((20, 20))
    attr[5:10, 5:10] = 1.0  # 25 inside
    attr[0, :] = 1.0  # 20 outside
    attr[15:, 15:] = -5.0  # negative evidence does not count
    assert energy_inside(attr, mask) == pytest.approx(25 / 45)
    assert np.isnan(energy_inside(-np.ones((20, 20)), mask))
    uniform = np.ones((20, 20))
    assert energy_inside(uniform, mask) == pytest.approx(mask_area_share(mask)) == pytest.approx(25 / 400)


def test_missing_masks_give_nans_and_shapes_must_match(mask):
    nan_mask = np.full((20, 20), np.nan, np.float32)
    assert not has_mask(nan_mask) and not has_mask(None) and has_mask(mask)
    scores = localisation_scores(np.ones((20, 20)), nan_mask)
    assert all(np.isnan(v) for v in scores.values())
    with pytest.raises(ValueError, match=r"mask shape \(20, 20\) does not match attribution shape \(10, 10\)"):
        energy_inside(np.ones((10, 10)), mask)
