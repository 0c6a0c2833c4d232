"""What the self-supervised methods share: pooled embeddings, momentum teachers, collapse
statistics and the online kNN probe that picks best.pt.

Why a kNN probe as the monitor: an SSL loss going down does not mean the features are useful
(a collapsed encoder can have a low BYOL loss). A k-nearest-neighbour classifier on frozen
validation embeddings against a clinical target (cardiomegaly where labelled, else sex, else
age) is cheap, has no trainable parameters, and measures what fine-tuning will exploit.
"""
from __future__ import annotations

import copy
import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import nn

from cxrssl.tasks.base import Task

#: Targets the kNN monitor can use, in the order `target: auto` tries them.
MONITOR_TARGETS = ("cardiomegaly", "sex", "age")


def pooled(features: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) feature map → (B, C) float embedding (global average pool)."""
    return features.float().mean(dim=(2, 3)) if features.ndim == 4 else features.float()


def make_teacher(module: nn.Module, factory=None) -> nn.Module:
    """A frozen copy that only moves by EMA (`ema_update`), never by the optimizer. `factory`
    builds a fresh instance to load the weights into, for modules deepcopy refuses (weight_norm)."""
    from lightly.models.utils import deactivate_requires_grad

    if factory is None:
        teacher = copy.deepcopy(module)
    else:
        teacher = factory()
        teacher.load_state_dict(module.state_dict())
    deactivate_requires_grad(teacher)
    return teacher


def momentum_at(step: int, max_steps: int, start: float, end: float = 1.0) -> float:
    """The cosine momentum schedule of BYOL/DINO (lightly's `cosine_schedule`): `start` at step
    0 rising to `end` at the last step."""
    from lightly.utils.scheduler import cosine_schedule

    return cosine_schedule(min(int(step), max(int(max_steps), 1)), max(int(max_steps), 1), start, end)


@torch.no_grad()
def ema_update(student: nn.Module, teacher: nn.Module, momentum: float) -> None:
    """teacher ← m·teacher + (1−m)·student over parameters (lightly's `update_momentum`)."""
    from lightly.models.utils import update_momentum

    update_momentum(student, teacher, m=float(momentum))


def effective_rank(embeddings: torch.Tensor) -> float:
    """Roy & Vetterli's effective rank: exp(entropy of the normalised singular values) of the
    centred embedding matrix; 1 when all rows lie on a line, D when variance is spread evenly."""
    x = embeddings.double() - embeddings.double().mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(x)
    if float(s.sum()) <= 0:
        return 1.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


def collapse_stats(embeddings: torch.Tensor) -> dict[str, float]:
    """`std`: mean per-dimension std of the L2-normalised embeddings × sqrt(D) (≈1 for spread
    features, → 0 when every image maps to the same direction, as in SimSiam's analysis);
    `eff_rank` and its share of D."""
    z = torch.nn.functional.normalize(embeddings.double(), dim=1)
    dim = z.shape[1]
    std = float(z.std(dim=0).mean()) * math.sqrt(dim) if len(z) > 1 else float("nan")
    rank = effective_rank(embeddings) if len(z) > 1 else float("nan")
    return {"std": std, "eff_rank": rank, "eff_rank_frac": rank / dim}


def knn_cv_score(embeddings: np.ndarray, target: np.ndarray, kind: str, k: int = 20,
                 folds: int = 5, seed: int = 0) -> float | None:
    """Cross-validated kNN (cosine, distance-weighted) within one split: AUROC for a binary
    target, R² for age. None when the target is too sparse to score."""
    from sklearn.metrics import r2_score, roc_auc_score
    from sklearn.model_selection import KFold, StratifiedKFold, cross_val_predict
    from sklearn.neighbors import KNeighborsClassifier, KNeighborsRegressor

    keep = ~np.isnan(target)
    x, y = embeddings[keep], target[keep]
    if kind == "binary":
        counts = np.bincount(y.astype(int), minlength=2)
        n_folds = min(folds, int(counts.min()))
        if n_folds < 2:
            return None
        k_eff = max(1, min(k, len(y) - len(y) // n_folds - 1))
        model = KNeighborsClassifier(n_neighbors=k_eff, metric="cosine", weights="distance")
        cv = StratifiedKFold(n_folds, shuffle=True, random_state=seed)
        prob = cross_val_predict(model, x, y.astype(int), cv=cv, method="predict_proba")[:, 1]
        return float(roc_auc_score(y, prob))
    if len(y) < 2 * folds:
        return None
    k_eff = max(1, min(k, len(y) - len(y) // folds - 1))
    model = KNeighborsRegressor(n_neighbors=k_eff, metric="cosine", weights="distance")
    pred = cross_val_predict(model, x, y, cv=KFold(folds, shuffle=True, random_state=seed))
    return float(r2_score(y, pred))


def warn_collapse(message: str) -> None:
    """A collapse warning both as a RuntimeWarning (tests, filters) and on the console (runs)."""
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    print(f"WARNING: {message}", flush=True)


class EmbeddingMonitor:
    """Collects frozen validation embeddings and labels during a validation epoch; at its end
    returns collapse statistics and kNN scores, and warns when the embedding collapses."""

    def __init__(self, target: str = "auto", k: int = 20, collapse_std: float = 0.05,
                 collapse_rank: float = 2.0):
        if target not in ("auto", *MONITOR_TARGETS):
            raise ValueError(f"pretext.monitor.target={target!r}: expected auto or one of {MONITOR_TARGETS}")
        self.target, self.k = target, int(k)
        self.collapse_std, self.collapse_rank = float(collapse_std), float(collapse_rank)
        self.reset()

    def reset(self) -> None:
        self._emb: list[torch.Tensor] = []
        self._labels: dict[str, list[torch.Tensor]] = {t: [] for t in MONITOR_TARGETS}

    def update(self, embeddings: torch.Tensor, batch: dict) -> None:
        self._emb.append(embeddings.detach().float().cpu())
        n = len(embeddings)
        for key in MONITOR_TARGETS:
            value = batch.get(key)
            value = torch.full((n,), float("nan")) if value is None else torch.as_tensor(value).float().cpu()
            self._labels[key].append(value.reshape(n))

    def compute(self) -> dict[str, float]:
        if not self._emb:
            return {}
        emb = torch.cat(self._emb)
        stats = collapse_stats(emb)
        out = {f"collapse_{k}": v for k, v in stats.items()}
        x = torch.nn.functional.normalize(emb, dim=1).numpy()
        chosen = None
        for key in MONITOR_TARGETS:
            if self.target not in ("auto", key):
                continue
            y = torch.cat(self._labels[key]).numpy()
            score = knn_cv_score(x, y, "regression" if key == "age" else "binary", self.k)
            if score is not None:
                out[f"knn_{'r2' if key == 'age' else 'auroc'}_{key}"] = score
                if chosen is None:
                    chosen = score
        out["knn"] = float("nan") if chosen is None else chosen
        if stats["std"] < self.collapse_std or stats["eff_rank"] < self.collapse_rank:
            message = (f"embedding collapse suspected: normalised std {stats['std']:.3g} (warn below "
                       f"{self.collapse_std}), effective rank {stats['eff_rank']:.3g} of {emb.shape[1]} "
                       f"(warn below {self.collapse_rank}); lower the LR, raise the temperature or "
                       "check the momentum schedule")
            warn_collapse(message)
        return out


class SSLTask(Task):
    """A self-supervised method: the encoder plus whatever heads/teachers the method needs.

    Subclasses implement `ssl_loss(views)`; training consumes `batch["views"]`, validation adds the
    frozen embedding of the plain `batch["image"]` to the monitor. best.pt follows `val/knn`."""

    monitor = "knn"
    monitor_mode = "max"
    views_key = "views"
    #: (student, teacher) attribute pairs a momentum teacher follows after each optimizer step;
    #: a method that sets them also sets momentum_start/momentum_end (BYOL, MoCo, DINO).
    ema_pairs: tuple[tuple[str, str], ...] = ()

    def __init__(self, encoder: nn.Module, monitor: dict[str, Any] | None = None):
        super().__init__()
        self.encoder = encoder
        self.embedding_monitor = EmbeddingMonitor(**dict(monitor or {}))
        self._epoch_metrics: dict[str, float] | None = None

    # -------------------------------------------------------------- shared pieces
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        return pooled(self.encoder(images))

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"embedding": self.embed(images)}

    def ssl_loss(self, views: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def _views(self, batch: dict) -> list[torch.Tensor]:
        views = batch.get(self.views_key)
        if views is None:
            raise KeyError(f"pretext={self.name} needs multi-view batches (batch['views']); build its "
                           "loaders with cxrssl.data.views.with_views and pretext.views")
        return list(views)

    # -------------------------------------------------------------- engine interface
    def on_after_optimizer_step(self, global_step: int, max_steps: int) -> None:
        if self.ema_pairs:
            self.momentum = momentum_at(global_step, max_steps, self.momentum_start, self.momentum_end)
            for student, teacher in self.ema_pairs:
                ema_update(getattr(self, student), getattr(self, teacher), self.momentum)

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]:
        loss, logs = self.ssl_loss(self._views(batch))
        return {**logs, "loss": loss}

    def validation_step(self, batch: dict) -> dict[str, torch.Tensor]:
        out = {}
        if batch.get(self.views_key) is not None:
            loss, logs = self.ssl_loss(self._views(batch))
            out = {"loss": loss.detach(), **logs}
        self.embedding_monitor.update(self.embed(batch["image"]), batch)
        return out

    def batch_size(self, batch: dict) -> int:
        return len(batch["image"])

    def on_validation_epoch_end(self) -> dict[str, float]:
        if self._epoch_metrics is None:
            self._epoch_metrics = self.embedding_monitor.compute()
        return dict(self._epoch_metrics)

    # -------------------------------------------------------------- legacy Task API
    def loss(self, outputs, batch):
        loss, logs = self.ssl_loss(self._views(batch))
        return loss, logs

    def update_metrics(self, outputs, batch):
        self.embedding_monitor.update(outputs["embedding"], batch)

    def compute_metrics(self) -> dict[str, float]:
        return self.on_validation_epoch_end()

    def reset_metrics(self) -> None:
        self.embedding_monitor.reset()
        self._epoch_metrics = None
