"""Evaluate, explain and predict run on a fine-tuned checkpoint: load it and the data it implies."""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf


def user_overrode(prefix: str) -> bool:
    """Did the command line override `prefix` (e.g. `data=nih`, `data.root=...`)?"""
    from hydra.core.hydra_config import HydraConfig

    try:
        overrides = HydraConfig.get().overrides.task
    except ValueError:  # outside Hydra (tests calling run() directly)
        return True
    return any(o.lstrip("+~").split("=")[0].split(".")[0] == prefix for o in overrides)


def load_model_and_data(cfg: DictConfig) -> tuple[Any, dict, DictConfig]:
    """(Classifier, checkpoint info, data config). Without `data...` overrides the data config is
    the one the checkpoint was trained on, so `cxrssl evaluate checkpoint=X` just works; the image
    size always follows the checkpoint."""
    from cxrssl.engine.precision import resolve_device
    from cxrssl.models.loading import load_classifier

    model, info = load_classifier(cfg.checkpoint, cfg.mlflow.tracking_uri, resolve_device(cfg.trainer.device))
    trained = OmegaConf.create(info.get("config") or "{}")
    if user_overrode("data") or "data" not in trained:
        data_cfg = cfg.data.copy()
    else:
        data_cfg = trained.data.copy()
        if "split" in cfg.data:
            OmegaConf.set_struct(data_cfg, False)
            data_cfg.split = cfg.data.split
    size = info.get("meta", {}).get("image_size")
    if size and int(data_cfg.image_size) != int(size):
        print(f"note: data.image_size={data_cfg.image_size} → {size}, the checkpoint's training size")
        OmegaConf.set_struct(data_cfg, False)
        data_cfg.image_size = int(size)
    return model, info, data_cfg


def checkpoint_tags(info: dict, split: str) -> dict[str, str]:
    """MLflow tags linking an evaluate/explain/predict run to the fine-tuning run it came from."""
    meta = info.get("meta", {})
    return {"pretext": str(meta.get("pretext")), "backbone": str(meta.get("backbone")), "split": split,
            "checkpoint": info["path"], "finetune_run_id": str(meta.get("mlflow_run_id"))}


def predict_split(model, table, data_cfg, split: str, precision, seed: int):
    """(predictions table of `split`, its DataLoader); a clear error if the split is empty."""
    from cxrssl.commands.inference import predict_probabilities, predictions_table
    from cxrssl.data.loaders import build_dataloaders

    rows = table[table["split"] == split]
    if rows.empty:
        raise ValueError(f"data.split={split}: no images in that split (splits present: "
                         f"{sorted(table['split'].dropna().unique())})")
    loader = build_dataloaders(data_cfg, rows, seed=seed, splits=(split,))[split]
    return predictions_table(rows, predict_probabilities(model, loader, precision, split)), loader
