"""A tiny "cardiomegaly" problem the tests can solve on CPU in seconds.

Every film has a "heart" disk at a random position (its mask); positives have a bright heart,
negatives a faint one, both on a noisy gradient background crossed by bright "ribs"
(structure an input-driven map would highlight but the label does not depend on). A classifier that separates them must
look at the heart, so a faithful attribution map should land inside the mask.
"""
from __future__ import annotations

import numpy as np
import torch


def make_films(n: int, size: int = 96, radius: int = 14, seed: int = 0) -> dict[str, torch.Tensor]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    labels = np.arange(n) % 2
    rng.shuffle(labels)
    images = np.empty((n, 1, size, size), np.float32)
    masks = np.empty((n, 1, size, size), np.float32)
    for i, label in enumerate(labels):
        cy, cx = rng.integers(radius + 4, size - radius - 4, size=2)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2
        level = rng.uniform(0.15, 0.4)  # so global brightness cannot give the label away
        film = level + 0.2 * yy / size + rng.normal(0, 0.05, (size, size))
        for rib in rng.integers(2, size - 4, size=4):  # bright bands in both classes: structure to ignore
            film[rib:rib + 2] += 0.3
        film[disk] += 0.4 if label else 0.1
        images[i, 0] = np.clip(film, 0, 1)
        masks[i, 0] = disk
    return {"image": torch.from_numpy(images), "mask": torch.from_numpy(masks),
            "label": torch.from_numpy(labels.astype(np.float32))}


def train_classifier(films: dict[str, torch.Tensor], epochs: int = 6, seed: int = 0, backbone: str = "test_resnet",
                     **encoder_kwargs):
    from cxrssl.models import Classifier, create_encoder

    torch.manual_seed(seed)
    model = Classifier(create_encoder(backbone, **encoder_kwargs))
    optimiser = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    n = len(films["label"])
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(n).split(16):
            optimiser.zero_grad()
            loss_fn(model(films["image"][idx]), films["label"][idx]).backward()
            optimiser.step()
    return model.eval()
