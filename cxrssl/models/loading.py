"""Find and load weights: a checkpoint path, an MLflow run id, `runs:/<id>/<path>`, or a plain
weights file. Mismatches fail with the expected vs found keys, never a silent partial load."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cxrssl.engine.checkpoint import CheckpointError, load_checkpoint
from cxrssl.errors import InputNotFound, UserError
from cxrssl.models.backbones import Encoder, create_encoder
from cxrssl.models.heads import Classifier

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")
NONE_VALUES = (None, "", "none", "null", "random", False)


class WeightsMismatchError(UserError, ValueError):
    """Weights do not fit the model; the message lists expected vs found."""


def resolve_ref(ref: str, tracking_uri: str | None = None, artifact_path: str = "checkpoints/best.pt") -> Path:
    """A local path as is; a run id or runs:/ URI through MLflow (downloaded/resolved locally)."""
    text = str(ref)
    path = Path(text).expanduser()
    if path.exists():
        return path / "checkpoints" / "best.pt" if path.is_dir() else path
    if text.startswith("runs:/") or _RUN_ID.match(text):
        from cxrssl.sweeps import original_cwd
        from cxrssl.tracking import resolve_run_artifact, resolve_tracking_uri

        uri = resolve_tracking_uri(tracking_uri or "sqlite:///mlflow.db", original_cwd())
        return resolve_run_artifact(text, uri, artifact_path=artifact_path)
    raise InputNotFound(f"{ref}: not a file, run directory, MLflow run id or runs:/ URI")


def _mismatch(result, found: dict, expected: nn.Module, source: str, hint: str = "") -> None:
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if missing or unexpected:
        raise WeightsMismatchError(
            f"{source}: weights do not fit {type(expected).__name__}. Missing (expected, not found): "
            f"{missing[:6]}{' ...' if len(missing) > 6 else ''}; unexpected (found, not expected): "
            f"{unexpected[:6]}{' ...' if len(unexpected) > 6 else ''}. {hint}")


def _strict_load(module: nn.Module, state: dict, source: str, hint: str = "") -> None:
    own = module.state_dict()
    shapes = [f"{k}: expected {tuple(own[k].shape)}, found {tuple(v.shape)}"
              for k, v in state.items() if k in own and own[k].shape != v.shape]
    if shapes:
        raise WeightsMismatchError(f"{source}: tensor shapes differ: {shapes[:4]}. {hint}")
    _mismatch(module.load_state_dict(state, strict=False), state, module, source, hint)


def sub_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def load_encoder(backbone_cfg: Any, ref: Any, tracking_uri: str | None = None) -> tuple[Encoder, dict]:
    """Build the configured encoder and fill it from `ref` (see module doc). Returns the encoder and
    a description {source, kind, pretext, backbone, decoder_state?}."""
    name = backbone_cfg["name"]
    if ref in NONE_VALUES or str(ref).lower() in ("none", "null", "random"):
        encoder = create_encoder(name, pretrained=backbone_cfg.get("pretrained"),
                                 **dict(backbone_cfg.get("timm_kwargs") or {}))
        return encoder, {"kind": "random" if not backbone_cfg.get("pretrained") else "weights_file",
                         "source": backbone_cfg.get("pretrained")}
    path = resolve_ref(ref, tracking_uri)
    from cxrssl.models.external import external_format_of, load_external_encoder

    external = external_format_of(path)  # torchxrayvision, DINOv2/RAD-DINO, MAE layouts
    if external is not None:
        return load_external_encoder(backbone_cfg, path, *external)
    try:
        ckpt = load_checkpoint(path)
    except CheckpointError as err:
        if "no 'model' entry" not in str(err):
            raise
        # A plain weights file (e.g. timm ImageNet weights): timm adapts the stem to 1 channel.
        encoder = create_encoder(name, pretrained=path, **dict(backbone_cfg.get("timm_kwargs") or {}))
        return encoder, {"kind": "weights_file", "source": str(path)}
    meta = ckpt.get("meta", {})
    found = meta.get("backbone")
    if found and found != name:
        raise WeightsMismatchError(
            f"pretrained={ref}: checkpoint encoder is backbone {found!r}, config asks for {name!r}; "
            f"pass backbone={backbone_option(found)} (expected {name}, found {found})")
    encoder = create_encoder(name, **dict(backbone_cfg.get("timm_kwargs") or {}))
    state = sub_state(ckpt["model"], "encoder.")
    if not state:
        raise WeightsMismatchError(f"{path}: no 'encoder.*' weights in the checkpoint (keys: "
                                   f"{list(ckpt['model'])[:5]})")
    _strict_load(encoder, state, str(path), f"Was it trained with backbone={name}?")
    info = {"kind": "checkpoint", "source": str(path), "pretext": meta.get("pretext"),
            "command": meta.get("command"), "backbone": found,
            "pretrain_patients": meta.get("pretrain_patients")}  # cxrssl.commands.patient_guard
    decoder = sub_state(ckpt["model"], "decoder.")
    if decoder:
        info["decoder_state"] = decoder
    return encoder, info


def backbone_option(timm_name: str) -> str:
    """The `backbone=` option that builds this timm model (conf/backbone/<option>.yaml)."""
    options = {"test_resnet": "tiny", "vit_tiny_patch16_224": "vit_tiny", "vit_small_patch16_224": "vit_small"}
    return options.get(timm_name, timm_name)


def load_classifier(ref: Any, tracking_uri: str | None = None,
                    device: str | torch.device = "cpu") -> tuple[Classifier, dict[str, Any]]:
    """A fine-tuned cardiomegaly checkpoint → (Classifier in eval mode, checkpoint dict sans weights)."""
    from cxrssl.models.embedded_config import read_embedded_config, safe_meta

    path = resolve_ref(ref, tracking_uri)
    ckpt = load_checkpoint(path)
    meta = safe_meta(ckpt.get("meta"), str(path))
    if meta.get("command") != "finetune":
        raise WeightsMismatchError(f"{path} is a {meta.get('command', 'unknown')} checkpoint "
                                   f"(pretext {meta.get('pretext')}); evaluate/explain/predict need a "
                                   "`cxrssl finetune` checkpoint")
    # The embedded config is untrusted: only checked backbone/data keys survive (embedded_config).
    trained = read_embedded_config(ckpt.get("config"), str(path))
    timm_kwargs = trained.get("backbone", {}).get("timm_kwargs", {})
    state = {k: v for k, v in ckpt["model"].items() if k.startswith(("encoder.", "head."))}
    # finetune.strategy=linear heads standardise the pooled features first (heads.FeatureStandardizer)
    model = Classifier(create_encoder(meta["backbone"], **timm_kwargs), standardize="head.norm.running_mean" in state)
    _strict_load(model, state, str(path))
    model.to(device).eval()
    info = {k: v for k, v in ckpt.items() if k not in ("model", "optimizer", "scheduler", "scaler", "rng")}
    info.update(path=str(path), meta=meta, config=trained)
    return model, info
