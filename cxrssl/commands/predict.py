"""`cxrssl predict checkpoint=... inputs=<folder | glob | CSV>`: a probability and a label per image.

Unreadable files never stop the rest: they are listed in `unreadable.csv` and counted at the end.
"""
from __future__ import annotations

import glob
import textwrap
from pathlib import Path

import pandas as pd
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, Dataset

from cxrssl.errors import ConfigError, InputNotFound

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
CSV_PATH_COLUMNS = ("path", "Path", "image_path", "filename", "file")


def collect_inputs(spec: str) -> list[Path]:
    """A folder (recursive, image suffixes), a glob pattern, or a CSV with a path column."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if path.suffix.lower() == ".csv" and path.is_file():
        table = pd.read_csv(path)
        column = next((c for c in CSV_PATH_COLUMNS if c in table.columns), None)
        if column is None:
            raise ConfigError(f"{path}: no image path column; expected one of {CSV_PATH_COLUMNS}, "
                             f"found {list(table.columns)}")
        return [_resolve_listed(path.parent, p) for p in map(Path, table[column].astype(str))]
    matches = sorted(Path(p) for p in glob.glob(str(path), recursive=True))
    if not matches:
        raise InputNotFound(f"inputs={spec}: not a folder, CSV or glob that matches any file")
    return matches


def _resolve_listed(csv_dir: Path, listed: Path) -> Path:
    """Relative to the CSV's folder, or to its parent when the CSV lists paths that start with its
    own folder's name (CheXpert's `CheXpert-v1.0-small/valid/...` inside `CheXpert-v1.0-small/`)."""
    if listed.is_absolute():
        return listed
    beside = csv_dir / listed
    return beside if beside.exists() or not (csv_dir.parent / listed).exists() else csv_dir.parent / listed


class FileImages(Dataset):
    """Decode + the checkpoint's eval preprocessing; a failure becomes a record, not an exception."""

    def __init__(self, paths: list[Path], data_cfg):
        from cxrssl.data.transforms import build_augment, build_preprocess

        self.paths, self.preprocess, self.to_tensor = paths, build_preprocess(data_cfg), build_augment(data_cfg, False)

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from cxrssl.data.io import read_image_uint8

        try:
            image = self.preprocess(image=read_image_uint8(self.paths[i]))["image"]
            return i, self.to_tensor(image=image)["image"].float(), None
        except Exception as err:  # noqa: BLE001 — any decoder failure is reported per file
            return i, None, f"{type(err).__name__}: {err}"


def _collate(items):
    ok = [(i, t) for i, t, e in items if e is None]
    failed = [(i, e) for i, _, e in items if e is not None]
    images = torch.stack([t.reshape(1, *t.shape[-2:]) for _, t in ok]) if ok else None
    return [i for i, _ in ok], images, failed


def run(cfg: DictConfig) -> dict:
    from tqdm.auto import tqdm

    from cxrssl.commands.checkpoint_data import load_model_and_data, saved_threshold
    from cxrssl.commands.report import finish_run, run_dir_from_hydra, start_run_tracking
    from cxrssl.commands.validation import check_config
    from cxrssl.engine.precision import resolve_precision

    check_config(cfg)  # impossible values fail here, in well under a second
    run_dir = run_dir_from_hydra()
    model, info, data_cfg = _load(cfg, load_model_and_data)
    meta = info.get("meta", {})
    threshold = saved_threshold(info, cfg.predict.get("threshold"))
    paths = collect_inputs(str(cfg.inputs))
    tracker = start_run_tracking(cfg, {"backbone": str(meta.get("backbone")), "checkpoint": info["path"]})
    with tracker:
        precision = resolve_precision(cfg.trainer.device, cfg.trainer.amp)
        loader = DataLoader(FileImages(paths, data_cfg), batch_size=int(cfg.predict.batch_size),
                            num_workers=int(data_cfg.get("num_workers", 0)), collate_fn=_collate)
        rows, failures, overlays = [], [], run_dir / "gradcam"
        for indices, images, failed in tqdm(loader, desc="predict", unit="batch"):
            failures += [{"path": str(paths[i]), "error": e} for i, e in failed]
            if images is None:
                continue
            with torch.no_grad(), precision.autocast():
                probs = torch.sigmoid(model(images.to(precision.device)).float()).cpu().numpy()
            rows += [{"path": str(paths[i]), "probability": float(p), "predicted": int(p >= threshold)}
                     for i, p in zip(indices, probs)]
            if cfg.predict.gradcam:
                _save_gradcam(model, images, [paths[i] for i in indices], indices, probs, overlays, precision.device,
                              threshold)
        out_csv, bad_csv = run_dir / "predictions.csv", run_dir / "unreadable.csv"
        pd.DataFrame(rows, columns=["path", "probability", "predicted"]).to_csv(out_csv, index=False)
        pd.DataFrame(failures, columns=["path", "error"]).to_csv(bad_csv, index=False)
        headline = [f"predict | {len(rows)} of {len(paths)} images scored, threshold {threshold:.3f}, "
                    f"{sum(r['predicted'] for r in rows)} predicted positive",
                    f"predictions: {out_csv}"]
        if failures:
            headline.append(f"unreadable:  {len(failures)} file(s), listed in {bad_csv}; first: "
                            f"{failures[0]['path']} ({textwrap.shorten(failures[0]['error'], 120)})")
        artifacts = [("predict", out_csv), ("predict", bad_csv)] + ([("gradcam", overlays)] if overlays.is_dir() else [])
        finish_run(cfg, tracker, run_dir, {"n_inputs": len(paths), "n_scored": len(rows), "n_unreadable": len(failures),
                                           "threshold": threshold, "predictions": out_csv, "unreadable": bad_csv,
                                           "checkpoint": info["path"]}, headline, artifacts)
        return {"n_scored": len(rows), "n_unreadable": len(failures)}


def _load(cfg: DictConfig, load_model_and_data):
    """A cxrssl checkpoint, or a file from `cxrssl export` (.onnx / .ts) with its own preprocessing."""
    from omegaconf import OmegaConf, open_dict

    from cxrssl.commands.export import ExportedModel, is_exported

    if not is_exported(cfg.checkpoint):
        return load_model_and_data(cfg)
    if cfg.predict.gradcam:
        raise ConfigError(f"predict.gradcam=true needs the PyTorch checkpoint; {cfg.checkpoint} is an exported model "
                          "(Grad-CAM reads gradients the exported graph does not keep)")
    model = ExportedModel(str(cfg.checkpoint))
    meta = model.metadata
    data_cfg = OmegaConf.create(OmegaConf.to_container(cfg.data, resolve=True))
    for key, value in (meta.get("data") or {}).items():
        if key != "source" and value is not None:
            data_cfg[key] = value
    with open_dict(cfg):
        cfg.data = data_cfg
    info = {"path": str(cfg.checkpoint), "meta": {**meta, "command": "export"}}
    return model, info, data_cfg


def _save_gradcam(model, images, paths, indices, probs, out_dir: Path, device, threshold: float) -> None:
    """One overlay per image, named `<input index>_<stem>` so repeated file names never collide:
    film and Grad-CAM side by side at 100 dpi, a labelled colour bar, the probability, the
    predicted label and the threshold that made it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from cxrssl.explain import compute_attributions, resolve_explain_layer
    from cxrssl.explain.render import colour_bar, draw_overlay

    layer, _ = resolve_explain_layer(model, None, int(images.shape[-1]))
    maps = compute_attributions(model, images, "gradcam", layer=layer, device=device, progress=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    for image, attr, path, index, prob in zip(images.numpy(), maps, paths, indices, probs):
        fig = Figure(figsize=(9, 5.8))
        FigureCanvasAgg(fig)
        left, right = fig.subplots(1, 2)
        fig.subplots_adjust(left=0.03, right=0.97, top=0.84, bottom=0.2, wspace=0.08)
        draw_overlay(left, image, None, title="film")
        handle = draw_overlay(right, image, attr, title=f"Grad-CAM ({layer})")
        colour_bar(fig, handle, right, signed=False)
        label = "cardiomegaly" if prob >= threshold else "no cardiomegaly"
        fig.suptitle(f"{Path(path).name}\np = {prob:.3f} → predicted: {label} (threshold {threshold:.3f})",
                     fontsize=12)
        fig.savefig(out_dir / f"{index:06d}_{Path(path).stem}_gradcam.png", dpi=100)
