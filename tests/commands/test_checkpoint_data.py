"""Threshold and data-config rules shared by evaluate, explain and predict."""
from __future__ import annotations

import pytest
from omegaconf import OmegaConf

from cxrssl.commands.checkpoint_data import effective_data_config, saved_threshold


def test_saved_threshold_is_used_and_never_silently_defaulted():
    assert saved_threshold({"path": "a.pt", "meta": {"threshold": 0.3}}, None) == 0.3
    assert saved_threshold({"path": "a.pt", "meta": {"threshold": 0.3}}, 0.7) == 0.7
    with pytest.raises(ValueError, match="a.pt has no saved decision threshold"):
        saved_threshold({"path": "a.pt", "meta": {}}, None)


def test_without_data_overrides_the_checkpoints_data_config_is_used():
    cfg = OmegaConf.create({"data": {"source": "synthetic", "image_size": 64, "split": "test"}})
    trained = OmegaConf.create({"data": {"source": "nih", "root": "/data/nih", "image_size": 224}})
    used = effective_data_config(cfg, trained)  # outside Hydra: no overrides
    assert used.source == "nih" and used.root == "/data/nih" and used.split == "test"
