"""Frozen-feature evaluation pieces: embeddings extracted once and cached, scikit-learn probes,
and the t-SNE picture. `cxrssl probe` (cxrssl/commands/probe.py) strings them together.

Why cache: the encoder pass is the only expensive part; with the embeddings on disk a probe at
every label fraction and repeat takes seconds. The key is a hash of the checkpoint's bytes (or
"random" + backbone + seed), the backbone config, the preprocessing settings and the rows, so a
changed checkpoint or data set can never reuse stale embeddings.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

PROBES = ("linear", "knn")


def file_digest(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def cache_key(weights_id: str, backbone_cfg: Any, data_cfg: Any, rows: pd.DataFrame) -> str:
    """Hash of what determines the embeddings: weights, backbone, preprocessing, rows."""
    from omegaconf import OmegaConf

    from cxrssl.data.transforms import preprocess_settings

    backbone = OmegaConf.to_container(backbone_cfg, resolve=True) if OmegaConf.is_config(backbone_cfg) \
        else dict(backbone_cfg)
    rows_id = pd.util.hash_pandas_object(rows[["image_id", "path", "split"]].astype(str), index=False)
    payload = json.dumps({"weights": weights_id, "backbone": backbone, "pre": preprocess_settings(data_cfg),
                          "rows": hashlib.sha256(rows_id.to_numpy().tobytes()).hexdigest()},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()[:20]


@torch.no_grad()
def extract_embeddings(encoder: torch.nn.Module, rows: pd.DataFrame, data_cfg: Any, device: torch.device,
                       seed: int = 0) -> np.ndarray:
    """Pooled encoder features of `rows` (no augmentation), in row order."""
    from cxrssl.data.loaders import build_dataloaders
    from cxrssl.tasks.ssl_common import pooled

    rows = rows.assign(split="val")  # one inference loader over rows of any split
    loader = build_dataloaders(data_cfg, rows, seed=seed, splits=("val",), train_splits=())["val"]
    encoder.to(device).eval()
    out, ids = [], []
    for batch in loader:
        out.append(pooled(encoder(batch["image"].to(device))).cpu().numpy())
        ids.extend(batch["image_id"])
    if list(ids) != rows["image_id"].astype(str).tolist():
        raise RuntimeError("embedding order does not match the rows (a dropped undecodable image?)")
    return np.concatenate(out).astype(np.float32)


def cached_embeddings(cache_dir: Path, key: str, compute) -> tuple[np.ndarray, bool]:
    """(embeddings, came_from_cache). Written atomically so a killed run leaves no half file."""
    path = Path(cache_dir) / f"{key}.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False), True
    values = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.tmp.npy")
    np.save(tmp, values, allow_pickle=False)
    tmp.replace(path)
    return values, False


def make_probe(kind: str, settings: dict[str, Any], seed: int = 0):
    """scikit-learn estimator with predict_proba: standardised logistic regression or cosine kNN."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer, StandardScaler

    if kind == "linear":
        return make_pipeline(StandardScaler(), LogisticRegression(
            C=float(settings.get("C", 1.0)), max_iter=int(settings.get("max_iter", 2000)),
            class_weight=settings.get("class_weight") or None, random_state=seed))
    if kind == "knn":
        return make_pipeline(Normalizer(), KNeighborsClassifier(
            n_neighbors=int(settings.get("k", 20)), weights=str(settings.get("weights", "distance"))))
    raise ValueError(f"probe={kind!r}: expected one of {PROBES}")


def fit_predict(kind: str, settings: dict, x_train: np.ndarray, y_train: np.ndarray,
                xs: list[np.ndarray], seed: int = 0) -> list[np.ndarray]:
    """Fit on the labelled training rows; positive-class probabilities for each of `xs`."""
    if len(np.unique(y_train)) < 2:
        raise ValueError(f"probe: the training labels hold one class only ({len(y_train)} rows); raise "
                         "probe.label_fractions or use more data")
    model = make_probe(kind, settings, seed)
    if kind == "knn":
        k = min(int(settings.get("k", 20)), len(y_train))
        model.set_params(kneighborsclassifier__n_neighbors=k)
    model.fit(x_train, y_train.astype(int))
    return [model.predict_proba(x)[:, 1] for x in xs]


def tsne_figure(embeddings: np.ndarray, rows: pd.DataFrame, path: Path, seed: int = 0) -> Path:
    """t-SNE (scikit-learn) of embeddings, one panel per attribute: label, age, sex, view, site."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    n = len(embeddings)
    xy = TSNE(n_components=2, perplexity=float(max(2, min(30, (n - 1) // 3))), init="pca",
              random_state=seed).fit_transform(embeddings)
    panels = [("cardiomegaly", "label: cardiomegaly"), ("age", "age"), ("sex", "sex"), ("view", "view"),
              ("site", "site")]
    panels = [(c, t) for c, t in panels if c in rows.columns and rows[c].notna().any()]
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (column, title) in zip(axes[0], panels):
        values = rows[column].reset_index(drop=True)
        if column == "age":
            sc = ax.scatter(xy[:, 0], xy[:, 1], c=pd.to_numeric(values, errors="coerce"), s=8, cmap="viridis")
            fig.colorbar(sc, ax=ax, fraction=0.046)
        else:
            for value in sorted(values.dropna().astype(str).unique()):
                keep = (values.astype(str) == value).to_numpy()
                ax.scatter(xy[keep, 0], xy[keep, 1], s=8, label=value)
            ax.legend(fontsize=7, markerscale=2)
        ax.set_title(title)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"t-SNE of validation embeddings (n={n})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
