"""Evaluate, explain and predict run on a fine-tuned checkpoint: load it and the data it implies."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from cxrssl.errors import ConfigError


def data_overrides() -> list[str]:
    """The `data...` overrides given on the command line (empty outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        overrides = HydraConfig.get().overrides.task
    except ValueError:  # outside Hydra
        return []
    return [o.lstrip("+~") for o in overrides if o.lstrip("+~").split("=")[0].split(".")[0] == "data"]


def effective_data_config(cfg: DictConfig, trained: DictConfig) -> DictConfig:
    """The data config a checkpoint command runs on: the one the checkpoint was trained on, with
    each `data.<key>=...` override applied on top (`data.split=val`, `data.num_workers=0`, ...).
    Choosing another source (`data=nih`) replaces it with the composed `cfg.data`."""
    overrides = data_overrides()
    if "data" not in trained or any(o.split("=")[0] == "data" for o in overrides):
        base = cfg.data.copy()
    else:
        base = trained.data.copy()
        OmegaConf.set_struct(base, False)
        for override in overrides:
            key = override.split("=")[0][len("data."):]
            OmegaConf.update(base, key, OmegaConf.select(cfg.data, key), merge=False)
        if "split" not in base and "split" in cfg.data:
            base.split = cfg.data.split
    OmegaConf.set_struct(base, False)
    return base


def load_model_and_data(cfg: DictConfig) -> tuple[Any, dict, DictConfig]:
    """(Classifier, checkpoint info, data config); see `effective_data_config`. The image size
    always follows the checkpoint. `cfg.data` is replaced by what is used, so MLflow params and
    config.yaml record the real data."""
    from cxrssl.engine.precision import resolve_device
    from cxrssl.models.loading import load_classifier

    model, info = load_classifier(cfg.checkpoint, cfg.mlflow.tracking_uri, resolve_device(cfg.trainer.device))
    data_cfg = effective_data_config(cfg, OmegaConf.create(info.get("config") or "{}"))
    size = info.get("meta", {}).get("image_size")
    if size and int(data_cfg.image_size) != int(size):
        print(f"note: data.image_size={data_cfg.image_size} → {size}, the checkpoint's training size")
        data_cfg.image_size = int(size)
    with open_dict(cfg):
        cfg.data = data_cfg
    from cxrssl.commands.validation import check_data

    check_data(cfg)  # the data config really used (the checkpoint's, with overrides)
    return model, info, data_cfg


def saved_threshold(info: dict, override) -> float:
    """`override` if given, else the threshold saved with the checkpoint (never a silent 0.5)."""
    if override is not None:
        return float(override)
    meta = info.get("meta", {})
    if "threshold" not in meta:
        raise ConfigError(f"{info['path']} has no saved decision threshold (did finetune finish?); "
                         "pass one explicitly, e.g. evaluate.threshold=youden, explain.threshold=0.5, predict.threshold=0.5")
    return float(meta["threshold"])


def checkpoint_tags(info: dict, split: str) -> dict[str, str]:
    """MLflow tags linking an evaluate/explain/predict run to the fine-tuning run it came from."""
    meta = info.get("meta", {})
    return {"pretext": str(meta.get("pretext")), "backbone": str(meta.get("backbone")), "split": split,
            "checkpoint": info["path"], "finetune_run_id": str(meta.get("mlflow_run_id"))}


def predict_split(model, table, data_cfg, split: str, precision, seed: int):
    """(predictions table of `split`, its DataLoader); a clear error if the split is empty. The
    loader is an inference loader whatever the split (no augmentation, no shuffle, no dropped last
    batch), also for `data.split=train`."""
    from cxrssl.commands.inference import predict_probabilities, predictions_table
    from cxrssl.data.loaders import build_dataloaders

    rows = table[table["split"] == split]
    if rows.empty:
        raise ConfigError(f"data.split={split}: no images in that split (splits present: "
                         f"{sorted(table['split'].dropna().unique())})")
    loader = build_dataloaders(data_cfg, rows, seed=seed, splits=(split,), train_splits=())[split]
    return predictions_table(rows, predict_probabilities(model, loader, precision, split)), loader
