"""Published chest-X-ray encoders as baselines, from local files only.

`pretrained=<file>` (finetune, probe) recognises these layouts by their keys and maps them onto
cxrssl's one-channel timm `Encoder`:

* ``xrv_densenet`` — torchxrayvision ``DenseNet`` (densenet121, 1-channel stem, 224 px);
* ``xrv_resnet``  — torchxrayvision ``ResNet`` (torchvision resnet50/101 under ``model.``, 512 px);
* ``dinov2``      — timm/DINOv2-style ViT (``blocks.N.ls1.gamma``, ``mask_token``; patch 14, 518 px);
* ``rad_dino``    — the Hugging Face Dinov2 layout RAD-DINO is published in (``embeddings.*``,
  ``encoder.layer.N.attention.attention.query``…), converted to the timm layout;
* ``mae``         — MAE pre-training checkpoints (facebookresearch/mae, medical MAE): decoder dropped.

Recognised but refused with the reason (``UNSUPPORTED``): torchxrayvision's ResNet autoencoder
(``xrv.autoencoders.ResNetAE``), whose encoder no timm backbone can hold without computing
something else.

Why explicit: a silent partial load looks like a bad pretext. Every key is either mapped, or
dropped for a stated reason (classifier, decoder, final norm the features-only encoder lacks), or
the load fails naming the missing and unexpected keys. Input normalisation is folded into the
stem (exact for a stem without padding or with the same mean, reported otherwise); position
embeddings are resampled to `data.image_size`; 3-channel stems are summed to 1 channel. Files are
read only through `cxrssl.models.safe_weights` (torch.load weights_only=True / safetensors).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from cxrssl.models.safe_weights import load_weights_file

IMAGENET = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
#: Per format: architectures it fits, the intensity normalisation it was trained with (for x in
#: [0, 1]) and its native resolution. xrv scales images to [-1024, 1024]: (x - 0.5) * 2048.
FORMATS: dict[str, dict[str, Any]] = {
    "xrv_densenet": {"archs": ("densenet121",), "mean": [0.5], "std": [1 / 2048], "size": 224, "stem": "features.conv0"},
    "xrv_resnet": {"archs": ("resnet50", "resnet101"), "mean": [0.5], "std": [1 / 2048], "size": 512, "stem": "conv1"},
    "dinov2": {"archs": ("vit_",), "mean": IMAGENET[0], "std": IMAGENET[1], "size": 518, "stem": "patch_embed.proj"},
    "rad_dino": {"archs": ("vit_",), "mean": IMAGENET[0], "std": IMAGENET[1], "size": 518, "stem": "patch_embed.proj"},
    "mae": {"archs": ("vit_",), "mean": IMAGENET[0], "std": IMAGENET[1], "size": 224, "stem": "patch_embed.proj"},
}
#: Layouts recognised only to say why they cannot be an encoder here.
UNSUPPORTED: dict[str, str] = {
    "xrv_resnet_ae": (
        "a torchxrayvision ResNet autoencoder (xrv.autoencoders.ResNetAE, e.g. the '101-elastic' weights). "
        "Its encoder is not a timm architecture, so no backbone in conf/backbone can take it: each "
        "bottleneck applies ReLU after bn3 *before* adding the shortcut (timm/torchvision ResNets add "
        "first), and layer4 is 2 blocks of width 128 (512 channels) with stride 6 instead of width 512 "
        "(2048 channels) with stride 2. Loading layers 1-3 into resnet101 would silently compute a different "
        "function. Use its latent through torchxrayvision itself (ae.encode), or pretrain/finetune from "
        "torchxrayvision's classifier weights instead (formats xrv_densenet, xrv_resnet)"),
}
#: Keys the one-channel features-only encoder has no place for, and why.
_DROPPED = [(re.compile(r"^(classifier|fc|head)\.|^op_threshs$"), "classification head"),
            (re.compile(r"^(norm|fc_norm)\."), "final norm (the features-only encoder stops before it)"),
            (re.compile(r"^(decoder_|mask_token$)"), "MAE/DINOv2 pre-training only (decoder, mask token)")]


def detect_format(state: dict[str, torch.Tensor]) -> str | None:
    """The layout of a state dict, or None (a cxrssl checkpoint or plain timm weights)."""
    keys = set(state)
    if any(k.startswith("encoder.net.") for k in keys):
        return None  # cxrssl's own
    if "embeddings.patch_embeddings.projection.weight" in keys:
        return "rad_dino"
    if "features.conv0.weight" in keys and state["features.conv0.weight"].shape[1] == 1:
        return "xrv_densenet"
    if "model.conv1.weight" in keys and "model.layer4.0.conv1.weight" in keys:
        return "xrv_resnet"
    if "conv1.weight" in keys and any(k.startswith(("uplayer1.", "uplayer_top.")) for k in keys):
        return "xrv_resnet_ae"
    if "patch_embed.proj.weight" in keys and any(k.startswith("decoder_") for k in keys):
        return "mae"
    if "patch_embed.proj.weight" in keys and ("blocks.0.ls1.gamma" in keys or "mask_token" in keys):
        return "dinov2"
    return None


def external_format_of(path: str | Path) -> tuple[str, dict] | None:
    """(format, state dict) when `path` holds one of the external layouts, else None (cxrssl
    checkpoints, plain timm weights and unreadable files take the usual path and its errors)."""
    try:
        state = load_weights_file(path)
    except Exception:  # noqa: BLE001 - the regular loader reports it
        return None
    fmt = detect_format(state)
    return None if fmt is None else (fmt, state)


def _hf_dinov2_to_timm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Hugging Face Dinov2Model keys → timm VisionTransformer keys (q, k, v fused into qkv)."""
    out: dict[str, torch.Tensor] = {}
    simple = {"embeddings.cls_token": "cls_token", "embeddings.mask_token": "mask_token",
              "embeddings.position_embeddings": "pos_embed",
              "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
              "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
              "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
    inner = {"norm1": "norm1", "norm2": "norm2", "attention.output.dense": "attn.proj", "mlp.fc1": "mlp.fc1",
             "mlp.fc2": "mlp.fc2", "layer_scale1.lambda1": "ls1.gamma", "layer_scale2.lambda1": "ls2.gamma"}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for key, value in state.items():
        if key in simple:
            out[simple[key]] = value
            continue
        m = re.match(r"^encoder\.layer\.(\d+)\.(.+)$", key)
        if not m:
            out[key] = value  # reported as unexpected by the strict check
            continue
        block, rest = int(m.group(1)), m.group(2)
        a = re.match(r"^attention\.attention\.(query|key|value)\.(weight|bias)$", rest)
        if a:
            qkv.setdefault((block, a.group(2)), {})[a.group(1)] = value
            continue
        for src, dst in inner.items():
            if rest.startswith(src + ".") or rest == src:
                suffix = rest[len(src):]
                out[f"blocks.{block}.{dst}{suffix}"] = value
                break
        else:
            out[key] = value
    for (block, kind), parts in qkv.items():
        out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


def to_timm_layout(state: dict[str, torch.Tensor], fmt: str) -> dict[str, torch.Tensor]:
    if fmt == "xrv_resnet":
        return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    if fmt == "rad_dino":
        return _hf_dinov2_to_timm(state)
    return dict(state)


def _fold_stem(state: dict, stem: str, mean: list[float], std: list[float], notes: list[str]) -> None:
    """Rewrite the first layer so it expects cxrssl's input, (x - 0.5) / 0.25 on one channel,
    instead of the original (x_c - mean_c) / std_c on C channels (x_c = x for a gray image)."""
    w = state[f"{stem}.weight"].float()
    channels = w.shape[1]
    m = torch.tensor((mean * channels)[:channels] if len(mean) == 1 else mean, dtype=torch.float32)
    s = torch.tensor((std * channels)[:channels] if len(std) == 1 else std, dtype=torch.float32)
    scale = (0.25 / s).view(1, -1, 1, 1)
    shift = ((0.5 - m) / s).view(1, -1, 1, 1)
    state[f"{stem}.weight"] = (w * scale).sum(dim=1, keepdim=True)
    offset = (w * shift).sum(dim=(1, 2, 3))
    if offset.abs().max() > 0:
        if f"{stem}.bias" in state:
            state[f"{stem}.bias"] = state[f"{stem}.bias"].float() + offset
            notes.append(f"input normalisation mean={m.tolist()} std={s.tolist()} folded into {stem} "
                         "(exact: the patch embedding has no padding)")
        else:
            notes.append(f"input normalisation mean={m.tolist()} differs from 0.5 and {stem} has no bias: "
                         "the mean shift is not applied (approximate)")
    else:
        notes.append(f"input normalisation (x - {m[0]:g}) / {s[0]:g} folded into {stem} weights (exact)")
    if channels != 1:
        notes.append(f"{stem}: {channels} input channels summed to 1 (gray input)")


def _encoder_key(key: str, target: set[str]) -> str | None:
    for candidate in (key, f"model.{key}", key.replace(".", "_", 1)):
        if candidate in target:
            return candidate
    return None


def load_external_encoder(backbone_cfg: Any, path: str | Path, fmt: str | None = None,
                          state: dict | None = None):
    """(Encoder with the file's weights, info {kind, format, source, notes, dropped})."""
    from timm.layers import resample_abs_pos_embed

    from cxrssl.models.backbones import create_encoder
    from cxrssl.models.loading import WeightsMismatchError

    state = load_weights_file(path) if state is None else state
    fmt = fmt or detect_format(state)
    if fmt in UNSUPPORTED:
        raise WeightsMismatchError(f"pretrained={path} is {UNSUPPORTED[fmt]}")
    if fmt not in FORMATS:
        raise WeightsMismatchError(f"pretrained={path}: not a recognised external layout (formats: "
                                   f"{sorted(FORMATS)}); first keys: {list(state)[:6]}")
    spec, name = FORMATS[fmt], str(backbone_cfg["name"])
    if not name.startswith(spec["archs"]):
        raise WeightsMismatchError(f"pretrained={path} is a {fmt} file; it fits backbone "
                                   f"{' or '.join(spec['archs'])}*, not {name!r} (pass a matching backbone=)")
    encoder = create_encoder(name, **dict(backbone_cfg.get("timm_kwargs") or {}))
    notes: list[str] = []
    plain = {k: v for k, v in to_timm_layout(state, fmt).items()}
    _fold_stem(plain, spec["stem"], spec["mean"], spec["std"], notes)
    target_state = encoder.net.state_dict()
    target = set(target_state)
    mapped, dropped, unexpected = {}, [], []
    for key, value in plain.items():
        dest = _encoder_key(key, target)
        if dest is not None:
            mapped[dest] = value
            continue
        reason = next((why for pattern, why in _DROPPED if pattern.search(key)), None)
        (dropped.append(f"{key} ({reason})") if reason else unexpected.append(key))
    pos = next((k for k in mapped if k.endswith("pos_embed")), None)
    if pos is not None and mapped[pos].shape != target_state[pos].shape:
        grid = encoder.net.model.patch_embed.grid_size
        mapped[pos] = resample_abs_pos_embed(mapped[pos].float(), list(grid), num_prefix_tokens=1)
        notes.append(f"position embeddings resampled from {tuple(plain[pos.replace('model.', '', 1)].shape)} to "
                     f"{tuple(mapped[pos].shape)} (data.image_size vs the native {spec['size']} px)")
    shapes = [f"{k}: expected {tuple(target_state[k].shape)}, found {tuple(v.shape)}"
              for k, v in mapped.items() if target_state[k].shape != v.shape]
    missing = sorted(target - set(mapped))
    if missing or unexpected or shapes:
        raise WeightsMismatchError(
            f"pretrained={path} ({fmt}) does not fit backbone {name!r}: missing (expected, not found): "
            f"{missing[:8]}{' ...' if len(missing) > 8 else ''}; unexpected (found, not expected): "
            f"{unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}; shapes: {shapes[:4]}")
    encoder.net.load_state_dict({k: v.to(target_state[k].dtype) for k, v in mapped.items()}, strict=True)
    notes.append(f"native resolution {spec['size']} px" + (
        "" if not backbone_cfg.get("timm_kwargs") else f"; running at img_size={backbone_cfg['timm_kwargs'].get('img_size')}"))
    print(f"pretrained={path}: {fmt} layout -> {name}; " + "; ".join(notes)
          + (f"; dropped {len(dropped)} keys: {sorted({d.split(' (')[1][:-1] for d in dropped})}" if dropped else ""),
          flush=True)
    return encoder, {"kind": "external", "format": fmt, "source": str(path), "notes": notes, "dropped": dropped}
