"""Small in-memory data for engine/task tests: images whose content encodes age and sex."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset


class ToyCXR(Dataset):
    """Sample dicts in the contract's shape; age sets the size of a bright square, sex draws a bar."""

    def __init__(self, n: int = 64, size: int = 32, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        self.age = torch.rand(n, generator=g) * 70 + 20
        self.sex = (torch.rand(n, generator=g) > 0.5).float()
        self.images = 0.2 + 0.05 * torch.rand(n, 1, size, size, generator=g)
        c = size // 2
        for i in range(n):
            r = int(2 + (self.age[i] - 20) / 70 * (size * 3 // 8))
            self.images[i, 0, c - r:c + r, c - r:c + r] = 0.8
            if self.sex[i] > 0:
                self.images[i, 0, :, :3] = 1.0

    def __len__(self):
        return len(self.age)

    def __getitem__(self, i):
        return {"image": self.images[i], "age": self.age[i], "sex": self.sex[i],
                "cardiomegaly": torch.tensor(float("nan")), "view": "PA",
                "patient_id": f"p{i}", "image_id": f"i{i}"}


def toy_loaders(n=64, size=32, batch_size=16, seed=0):
    train = DataLoader(ToyCXR(n, size, seed), batch_size=batch_size, shuffle=True,
                       generator=torch.Generator().manual_seed(seed))
    val = DataLoader(ToyCXR(n // 2, size, seed + 1), batch_size=batch_size)
    return {"train": train, "val": val}
