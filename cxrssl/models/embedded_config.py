"""The config stored inside a checkpoint is untrusted input: parse it safely and keep only what
evaluate/explain/predict need, within bounds.

A checkpoint can come from anyone (an MLflow store, a download). Its embedded YAML used to be fed
to `OmegaConf.create` whole: `${oc.env:SECRET}` was resolved and logged, a 361-byte alias bomb
never finished, `meta.backbone: hf-hub:...` triggered network lookups and `image_size: 30000`
cached 900 MB images. Here the text is size-capped, parsed by a safe loader that refuses YAML
aliases, refused if any value holds an interpolation (`${`), and reduced to an allow-list of keys,
each checked against a type and range. Anything else is dropped.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import yaml

from cxrssl.errors import ConfigError

MAX_CONFIG_BYTES = 256 * 1024
MAX_DEPTH = 10
MAX_NODES = 20_000
MAX_PATH_CHARS = 4096


class EmbeddedConfigError(ConfigError):
    """The config inside a checkpoint is malformed or out of bounds; the message names the key."""


class _NoAliasLoader(yaml.SafeLoader):
    """SafeLoader without anchors/aliases (the billion-laughs expansion), nor arbitrary tags."""

    def compose_node(self, parent, index):  # noqa: D401 - PyYAML hook
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise EmbeddedConfigError(f"YAML aliases are not allowed in an embedded config (line "
                                      f"{event.start_mark.line + 1})")
        return super().compose_node(parent, index)


def _int(lo: int, hi: int):
    def check(key: str, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise EmbeddedConfigError(f"{key}={str(value)[:40]!r}: expected an integer in [{lo}, {hi}]")
        return value
    return check


def _float(lo: float, hi: float):
    def check(key: str, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not lo <= float(value) <= hi:
            raise EmbeddedConfigError(f"{key}={str(value)[:40]!r}: expected a number in [{lo}, {hi}]")
        return float(value)
    return check


def _choice(*options: Any):
    def check(key: str, value: Any) -> Any:
        if value not in options:
            raise EmbeddedConfigError(f"{key}={str(value)[:40]!r}: expected one of {list(options)}")
        return value
    return check


def _path(key: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > MAX_PATH_CHARS or "\x00" in value:
        raise EmbeddedConfigError(f"{key}: expected a file path of at most {MAX_PATH_CHARS} characters")
    return value


def _bool(key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise EmbeddedConfigError(f"{key}={str(value)[:40]!r}: expected true or false")
    return value


def _columns(key: str, value: Any) -> dict | None:
    if value is None:
        return None
    if not isinstance(value, Mapping) or len(value) > 64 or not all(
            isinstance(k, str) and isinstance(v, str) and len(k) <= 64 and len(v) <= 256 for k, v in value.items()):
        raise EmbeddedConfigError(f"{key}: expected a small mapping of column names")
    return dict(value)


_SOURCES = ("synthetic", "csv", "nih", "chexpert", "mimic")
#: data keys a checkpoint may carry into evaluate/explain/predict, each with its check. Absent:
#: cache.dir (where this machine caches is this machine's choice), gpu_augment (a training-only
#: switch: carried over, `evaluate data.split=train` would feed the model unaugmented uint8), anything unknown.
DATA_KEYS: dict[str, Any] = {
    "source": _choice(*_SOURCES), "root": _path, "csv": _path, "patients_csv": _path, "columns": _columns,
    "image_size": _int(16, 2048), "batch_size": _int(1, 4096), "num_workers": _int(0, 64),
    "val_fraction": _float(0, 0.9), "test_fraction": _float(0, 0.9), "split_seed": _int(0, 2**31 - 1),
    "label_fraction": _float(0, 1), "equalize": _choice("none", "clahe", "hist", None),
    "clahe_clip": _float(0, 100), "resize_mode": _choice("letterbox", "crop", "stretch"),
    "on_error": _choice("raise", "skip"), "pin_memory": _choice("auto", True, False),
    "uncertain": _choice("ignore", "ones", "zeros"), "blank": _choice("zeros", "ignore"),
    "frontal_only": _bool, "valid_split": _choice("test", "val"),
    "cohort": _choice("no_finding_vs_cardiomegaly", "all"), "split": _choice("train", "val", "test"),
    "max_pixels": _int(1, 2**31 - 1),
    "label_seed": lambda k, v: None if v is None else _int(0, 2**31 - 1)(k, v), "scale_val_labels": _bool,
    "pretrain_pool": _choice("train_and_pool", "all_except_eval", "train"),
}
AUGMENT_KEYS = {"rotate_limit": _float(0, 180), "scale_limit": _float(0, 1), "brightness_contrast": _float(0, 1),
                "hflip": _bool}
CACHE_KEYS = {"enabled": _bool, "workers": _int(1, 64), "progress": _bool}
#: The synthetic generator's size knobs are bounded; its other knobs (shape, noise, sites ...) are
#: accepted as plain short scalars, so a checkpoint regenerates the phantoms it was trained on.
SYNTHETIC_BOUNDS = {"n_patients": _int(1, 100_000), "n_unlabelled_patients": lambda k, v: None if v is None
                    else _int(0, 400_000)(k, v), "native_size": _int(16, 2048), "workers": _int(1, 64),
                    "images_per_patient": lambda k, v: [_int(1, 20)(k, x) for x in v]
                    if isinstance(v, list) and len(v) == 2 else _int(1, 20)(k, v)}


def _plain(key: str, value: Any) -> Any:
    ok = value is None or isinstance(value, bool) or (isinstance(value, (int, float)) and abs(value) <= 1e9) \
        or (isinstance(value, str) and len(value) <= 64)
    if isinstance(value, list) and len(value) <= 16:
        return [_plain(key, v) for v in value]
    if not ok:
        raise EmbeddedConfigError(f"{key}={str(value)[:40]!r}: expected a short plain value")
    return value


class _Synthetic(dict):
    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and len(key) <= 64

    def __getitem__(self, key: str):
        return SYNTHETIC_BOUNDS.get(key, _plain)


SYNTHETIC_KEYS = _Synthetic()


def parse_config_text(text: Any, source: str = "checkpoint") -> dict:
    """Safe-load ``text`` (a YAML string or an already parsed mapping) into plain containers."""
    if text is None or text == "":
        return {}
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if isinstance(text, str):
        if len(text.encode("utf-8", "replace")) > MAX_CONFIG_BYTES:
            raise EmbeddedConfigError(f"{source}: embedded config is {len(text)} characters; the limit is "
                                      f"{MAX_CONFIG_BYTES} bytes")
        try:
            parsed = yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
        except yaml.YAMLError as err:
            raise EmbeddedConfigError(f"{source}: embedded config is not valid YAML: {str(err)[:200]}") from err
    else:
        parsed = text
    if parsed is None:
        return {}
    if not isinstance(parsed, Mapping):
        raise EmbeddedConfigError(f"{source}: embedded config is a {type(parsed).__name__}, expected a mapping")
    _check_tree(parsed, source)
    return dict(parsed)


def _check_tree(node: Any, source: str) -> None:
    """Refuse interpolations anywhere, and trees too deep or too large."""
    stack, count = [(node, 0, "")], 0
    while stack:
        item, depth, where = stack.pop()
        count += 1
        if count > MAX_NODES or depth > MAX_DEPTH:
            raise EmbeddedConfigError(f"{source}: embedded config is too large or too deeply nested")
        if isinstance(item, str) and "${" in item:
            raise EmbeddedConfigError(f"{source}: {where or 'config'} holds an interpolation ({item[:60]!r}); "
                                      "interpolations in a checkpoint's config are refused")
        if isinstance(item, Mapping):
            stack.extend((v, depth + 1, f"{where}.{k}".lstrip(".")) for k, v in item.items())
            stack.extend((k, depth + 1, where) for k in item if isinstance(k, str))
        elif isinstance(item, list):
            stack.extend((v, depth + 1, where) for v in item)


def _pick(node: Any, checks: Mapping[str, Any], prefix: str) -> dict:
    if node is None:
        return {}
    if not isinstance(node, Mapping):
        raise EmbeddedConfigError(f"{prefix}: expected a mapping")
    return {k: checks[k](f"{prefix}.{k}", v) for k, v in node.items() if k in checks}


def safe_data_config(data: Any, source: str = "checkpoint") -> dict:
    """Only DATA_KEYS (and augment/cache/synthetic sub-keys) of an embedded `data` node, checked."""
    out = _pick(data, DATA_KEYS, "data")
    if isinstance(data, Mapping):
        for key, checks in (("augment", AUGMENT_KEYS), ("cache", CACHE_KEYS), ("synthetic", SYNTHETIC_KEYS)):
            if key in data:
                out[key] = _pick(data[key], checks, f"data.{key}")
    return out


def safe_backbone_config(backbone: Any) -> dict:
    """`backbone.name` (a local timm architecture) and allow-listed `timm_kwargs`; never `pretrained`."""
    from cxrssl.models.backbones import check_backbone_name, check_timm_kwargs

    if not isinstance(backbone, Mapping):
        return {}
    out: dict[str, Any] = {}
    if "name" in backbone:
        out["name"] = check_backbone_name(backbone["name"])
    out["timm_kwargs"] = check_timm_kwargs(dict(backbone.get("timm_kwargs") or {}))
    return out


def read_embedded_config(text: Any, source: str = "checkpoint") -> dict:
    """The usable part of a checkpoint's config: {"backbone": {...}, "data": {...}} (see module doc)."""
    parsed = parse_config_text(text, source)
    out: dict[str, Any] = {}
    if "backbone" in parsed:
        out["backbone"] = safe_backbone_config(parsed["backbone"])
    if "data" in parsed:
        out["data"] = safe_data_config(parsed["data"], source)
    return out


def safe_meta(meta: Any, source: str = "checkpoint") -> dict:
    """Bounds on the checkpoint `meta` fields that steer evaluate: backbone name and image size."""
    from cxrssl.models.backbones import check_backbone_name

    meta = dict(meta or {}) if isinstance(meta, Mapping) else {}
    _check_tree(meta, source)
    if meta.get("backbone") is not None:
        meta["backbone"] = check_backbone_name(meta["backbone"])
    if meta.get("image_size") is not None:
        meta["image_size"] = _int(16, 2048)("meta.image_size", meta["image_size"])
    if meta.get("threshold") is not None:
        meta["threshold"] = _float(0, 1)("meta.threshold", meta["threshold"])
    return meta
