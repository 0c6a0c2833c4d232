"""Batched inference shared by finetune (threshold on val), evaluate, explain and predict."""
from __future__ import annotations

import pandas as pd
import torch
from tqdm.auto import tqdm

from cxrssl.engine.precision import Precision

PREDICTION_COLUMNS = ("image_id", "patient_id", "probability", "label", "age", "sex", "view", "split",
                      "path", "mask_path")


@torch.no_grad()
def predict_probabilities(model: torch.nn.Module, loader, precision: Precision, desc: str = "predict") -> pd.DataFrame:
    """(image_id, probability) for every image the loader yields, in loader order."""
    model.eval().to(precision.device)
    ids, probs = [], []
    for batch in tqdm(loader, desc=desc, unit="batch", leave=False):
        with precision.autocast():
            logits = model(batch["image"].to(precision.device, non_blocking=True))
        probs.append(torch.sigmoid(logits.float()).cpu())
        ids.extend(batch["image_id"])
    return pd.DataFrame({"image_id": ids, "probability": torch.cat(probs).numpy() if probs else []})


def predictions_table(rows: pd.DataFrame, probs: pd.DataFrame) -> pd.DataFrame:
    """The predictions contract (docs/design.md §8): metadata + probability, label = cardiomegaly."""
    table = rows.assign(label=rows["cardiomegaly"])
    merged = table.merge(probs, on="image_id", how="inner", validate="one_to_one")
    if len(merged) != len(probs):
        raise RuntimeError(f"{len(probs) - len(merged)} predicted image ids not found in the metadata table")
    return merged[[c for c in PREDICTION_COLUMNS if c in merged.columns]]
