"""Crafted pickles for the security tests: unpickling one creates a marker file (the "code ran")."""
from __future__ import annotations

from pathlib import Path

import torch


class Payload:
    """`__reduce__` names `open(marker, "w")`: any loader that unpickles objects runs it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def tiny_state() -> dict[str, torch.Tensor]:
    """A real state dict of the `test_resnet` classifier (what a weights file would hold)."""
    import timm

    return timm.create_model("test_resnet", num_classes=1000).state_dict()


def weights_with_payload(path: Path, marker: Path) -> Path:
    torch.save({**tiny_state(), "evil": Payload(marker)}, path)
    return path


def checkpoint_with_payload(path: Path, marker: Path, config: str = "") -> Path:
    """A cxrssl-shaped checkpoint (model/meta/config) carrying the payload in `meta`."""
    torch.save({"version": 1, "model": {"encoder.x": torch.zeros(1)}, "config": config,
                "meta": {"command": "finetune", "backbone": "test_resnet", "evil": Payload(marker)}}, path)
    return path
