"""`cxrssl export checkpoint=... format=onnx|torchscript`: a fine-tuned classifier for deployment.

The exported graph takes `image` (B, 1, H, W) in [0, 1] and returns `logit` and `probability`
(B,). Intensity normalisation is part of the graph (the encoder's fixed mean/std buffers), and the
metadata carries what a deployment needs to reproduce cxrssl's predictions: the saved decision
threshold and its rule, the image size and the preprocessing keys of the training data config.
`cxrssl predict checkpoint=<exported file>` runs it (onnxruntime for ONNX).
"""
from __future__ import annotations

import json
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

FORMATS = {"onnx": ".onnx", "torchscript": ".ts"}
METADATA_KEY = "cxrssl"
#: Data-config keys that decide how a file becomes the model's input tensor.
PREPROCESS_KEYS = ("image_size", "resize_mode", "equalize", "max_pixels", "source")


class ProbabilityModel(nn.Module):
    """The classifier with both outputs named, so a deployment never re-implements the sigmoid."""

    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.classifier = classifier

    def forward(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logit = self.classifier(image).reshape(-1)
        return logit, torch.sigmoid(logit)


def export_metadata(info: dict, data_cfg: DictConfig, model: nn.Module) -> dict[str, Any]:
    from cxrssl import __version__

    meta = info.get("meta", {}) or {}
    encoder = getattr(model, "encoder", None)
    data = OmegaConf.to_container(data_cfg, resolve=True) if data_cfg is not None else {}
    return {"format_version": 1, "cxrssl_version": __version__, "checkpoint": str(info.get("path")),
            "backbone": meta.get("backbone"), "pretext": meta.get("pretext"),
            "threshold": meta.get("threshold"), "threshold_rule": meta.get("threshold_rule"),
            "image_size": int(meta.get("image_size") or data.get("image_size")),
            "input": "image: float32 (batch, 1, H, W), grey levels in [0, 1]",
            "outputs": "logit (batch,), probability (batch,) = sigmoid(logit); positive when probability >= threshold",
            "normalisation": {"mean": float(getattr(encoder, "mean", torch.tensor(0.5))),
                              "std": float(getattr(encoder, "std", torch.tensor(0.25))), "inside_graph": True},
            "data": {k: data.get(k) for k in PREPROCESS_KEYS if k in data}}


def export_model(model: nn.Module, metadata: dict, out_path: Path, fmt: str, batch: int = 2) -> Path:
    """Write the ONNX or TorchScript file with `metadata` embedded; returns its path."""
    size = int(metadata["image_size"])
    wrapped = ProbabilityModel(model.cpu().eval()).eval()
    example = torch.rand(batch, 1, size, size)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "torchscript":
        with torch.no_grad(), _quiet_jit():
            traced = torch.jit.trace(wrapped, example)
            torch.jit.save(traced, str(out_path), _extra_files={f"{METADATA_KEY}.json": json.dumps(metadata)})
        return out_path
    import onnx

    torch.onnx.export(wrapped, (example,), str(out_path), input_names=["image"], output_names=["logit", "probability"],
                      dynamic_axes={"image": {0: "batch"}, "logit": {0: "batch"}, "probability": {0: "batch"}},
                      opset_version=17, dynamo=False)
    proto = onnx.load(str(out_path))
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    onnx.save(proto, str(out_path))
    return out_path


@contextmanager
def _quiet_jit():
    """TorchScript still works but warns on every call that it is deprecated (ONNX is the default)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


class ExportedModel:
    """An exported file behind the Classifier call signature: images (B, 1, H, W) → logits (B,)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.suffix == ".onnx":
            try:
                import onnxruntime as ort
            except ModuleNotFoundError as err:
                raise ModuleNotFoundError("running an ONNX model needs onnxruntime: pip install 'cxrssl[export]'") from err
            self.session = ort.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
            props = self.session.get_modelmeta().custom_metadata_map
            self.module = None
        else:
            files = {f"{METADATA_KEY}.json": ""}
            with _quiet_jit():
                self.module = torch.jit.load(str(self.path), map_location="cpu", _extra_files=files).eval()
            props = {METADATA_KEY: files[f"{METADATA_KEY}.json"]}
        if not props.get(METADATA_KEY):
            raise ValueError(f"{self.path}: no cxrssl metadata; export it with `cxrssl export checkpoint=...`")
        self.metadata = json.loads(props[METADATA_KEY])

    def probabilities(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-self.logits(images)))

    def logits(self, images: torch.Tensor | np.ndarray) -> np.ndarray:
        x = np.asarray(torch.as_tensor(images, dtype=torch.float32).cpu(), dtype=np.float32)
        if self.module is not None:
            with torch.no_grad():
                return self.module(torch.from_numpy(x))[0].numpy()
        return self.session.run(["logit"], {"image": x})[0]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(self.logits(images))

    def eval(self):
        return self

    def to(self, *_args, **_kwargs):
        return self


def is_exported(path: str | Path) -> bool:
    return Path(str(path)).suffix in (".onnx", ".ts")


def run(cfg: DictConfig) -> dict:
    from cxrssl.commands.checkpoint_data import load_model_and_data
    from cxrssl.commands.report import finish_run, run_dir_from_hydra, start_run_tracking

    fmt = str(cfg.format).lower()
    if fmt not in FORMATS:
        raise ValueError(f"format={cfg.format}: choose onnx or torchscript")
    run_dir = run_dir_from_hydra()
    model, info, data_cfg = load_model_and_data(cfg)
    metadata = export_metadata(info, data_cfg, model)
    if metadata["threshold"] is None:
        raise ValueError(f"{info['path']} has no saved threshold (did finetune finish?); export needs one")
    tracker = start_run_tracking(cfg, {"backbone": str(metadata["backbone"]), "checkpoint": info["path"],
                                       "format": fmt})
    with tracker:
        out = Path(str(cfg.out)) if cfg.get("out") else run_dir / f"model{FORMATS[fmt]}"
        export_model(model, metadata, out, fmt)
        parity = parity_check(model, out, int(metadata["image_size"]), seed=int(cfg.trainer.seed))
        headline = [f"export | {fmt} | {metadata['backbone']} | {metadata['image_size']} px | threshold "
                    f"{metadata['threshold']:.4f}", f"model:       {out}",
                    f"parity:      max |Δ probability| = {parity:.2e} vs PyTorch on a batch of 4",
                    f"next:        cxrssl predict checkpoint={out} inputs=<folder | glob | list.csv>"]
        finish_run(cfg, tracker, run_dir, {"export": str(out), "format": fmt, "metadata": metadata,
                                           "max_abs_probability_difference": parity, "checkpoint": info["path"]},
                   headline, [("export", out)])
        return {"path": str(out), "parity": parity}


def parity_check(model: nn.Module, path: Path, size: int, seed: int = 0, batch: int = 4) -> float:
    """Largest |probability difference| between PyTorch and the exported model on random films."""
    images = torch.rand(batch, 1, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        reference = torch.sigmoid(model.cpu().eval()(images).reshape(-1)).numpy()
    return float(np.abs(ExportedModel(path).probabilities(images) - reference).max())
