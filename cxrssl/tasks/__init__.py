"""Tasks: one per `conf/pretext/*.yaml` (+ cardiomegaly for finetune), built by `build_pretext_task`."""
from __future__ import annotations

from collections.abc import Mapping

import pandas as pd

from cxrssl.models import create_encoder
from cxrssl.tasks.base import Task

PRETEXTS = ("age", "sex", "recon")
#: Self-supervised methods built through `cxrssl.tasks.registry` from their `task:` config node.
SSL_PRETEXTS = ("simclr", "moco", "byol", "dino", "mae")


def build_encoder(backbone_cfg: Mapping):
    extra = dict(backbone_cfg.get("timm_kwargs") or {})
    return create_encoder(backbone_cfg["name"], pretrained=backbone_cfg.get("pretrained"), **extra)


def build_pretext_task(pretext_cfg: Mapping, backbone_cfg: Mapping, train_table: pd.DataFrame) -> Task:
    """`train_table` supplies statistics a task needs (e.g. the mean training age)."""
    name = pretext_cfg["name"]
    encoder = build_encoder(backbone_cfg)
    from cxrssl.tasks.registry import build_registered_task, is_registered

    if is_registered(pretext_cfg):
        return build_registered_task(pretext_cfg, encoder)
    if name == "age":
        from cxrssl.tasks.age import AgeTask

        ages = train_table["age"].dropna()
        if ages.empty:
            raise ValueError("pretext=age but no training image has an age: choose pretext=sex or recon")
        return AgeTask(encoder, float(ages.mean()), loss=pretext_cfg.get("loss", "l1"),
                       age_scale=pretext_cfg.get("age_scale", 100.0), dropout=pretext_cfg.get("dropout", 0.0))
    if name == "sex":
        from cxrssl.tasks.sex import SexTask

        if train_table["sex"].dropna().nunique() < 2:
            raise ValueError("pretext=sex needs training images of both sexes; found "
                             f"{sorted(train_table['sex'].dropna().unique())}")
        return SexTask(encoder, label_smoothing=pretext_cfg.get("label_smoothing", 0.0),
                       dropout=pretext_cfg.get("dropout", 0.0))
    if name == "recon":
        from cxrssl.tasks.recon import ReconTask

        return ReconTask(encoder, mask_ratio=pretext_cfg.get("mask_ratio", 0.0),
                         patch_size=pretext_cfg.get("patch_size", 8),
                         ignore_zero=pretext_cfg.get("ignore_zero", False),
                         decoder_width=pretext_cfg.get("decoder_width", 64))
    raise ValueError(f"pretext.name={name!r}: expected one of {PRETEXTS + SSL_PRETEXTS}")


__all__ = ["Task", "PRETEXTS", "SSL_PRETEXTS", "build_encoder", "build_pretext_task"]
