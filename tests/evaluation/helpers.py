"""Synthetic predictions tables (design.md §8) for the evaluation tests."""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.special import expit


def synthetic_predictions(n_patients: int = 300, images_per_patient: int = 2, separation: float = 1.2,
                          seed: int = 0) -> pd.DataFrame:
    """Patients with a 0/1 label and a binormal score shared (plus noise) by their images."""
    rng = np.random.default_rng(seed)
    label = rng.integers(0, 2, n_patients).astype(float)
    patient_score = rng.normal(label * separation, 1.0)
    patient = np.repeat(np.arange(n_patients), images_per_patient)
    score = patient_score[patient] + rng.normal(0, 0.3, len(patient))
    n = len(patient)
    return pd.DataFrame({
        "image_id": [f"img{i}" for i in range(n)],
        "patient_id": [f"pat{k}" for k in patient],
        "probability": expit(score),
        "label": label[patient],
        "age": rng.integers(18, 95, n).astype(float),
        "sex": rng.choice(np.array(["M", "F"], dtype=object), n),
        "view": rng.choice(np.array(["PA", "AP"], dtype=object), n),
        "split": "test",
    })
