#!/usr/bin/env python
"""Calibration of the synthetic phantom: are there shortcuts, and is there headroom?

On the test split of a synthetic set (the default settings unless overridden), trivial predictors
must stay weak and a CNN must still learn the task:

    age alone (logistic regression on age)            AUROC <= 0.60
    mean film intensity                                AUROC <= 0.60
    chest (lung-mask) width for *sex*                  AUROC <= 0.85
    16x16 thumbnail logistic regression, 10 % labels   AUROC <= 0.80
    supervised CNN (CPU preset, 100 % labels)          AUROC >= 0.88   (--cnn; minutes on a CPU)

plus the ceiling: the true CTR (and the film's measured CTR) as a score against the noisy reader
labels. Everything except the CNN is scikit-learn on thumbnails (seconds).

    python scripts/bench_phantom.py                       # default preset (v2), sklearn rows
    python scripts/bench_phantom.py --cnn                 # + the CNN row (finetune + evaluate)
    python scripts/bench_phantom.py data.synthetic.preset=easy     # the old generator, for contrast

Extra arguments are ``data.*`` overrides (Hydra syntax). The pool of unlabelled patients is not
generated here (``n_unlabelled_patients=0``): it does not change the labelled cohort's bytes.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression, LogisticRegressionCV
from sklearn.metrics import roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

TARGETS = {"age alone": ("<=", 0.60), "mean intensity": ("<=", 0.60), "chest width → sex": ("<=", 0.85),
           "16×16 thumbnail LR, 10 % labels": ("<=", 0.80), "supervised CNN, 100 % labels": (">=", 0.88)}
CNN_PRESET = ["backbone=tiny", "data.image_size=64", "data.num_workers=0", "trainer.progress=false",
              "trainer.max_epochs=12", "optimizer.lr=3e-3"]


def data_config(overrides: list[str]):
    from hydra.core.global_hydra import GlobalHydra

    from cxrssl.commands.inprocess import compose_config

    cfg = compose_config("finetune", ["data.synthetic.n_unlabelled_patients=0", *overrides])
    GlobalHydra.instance().clear()
    return cfg.data


def thumbnails(paths: pd.Series, size: int) -> np.ndarray:
    return np.stack([cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (size, size),
                                interpolation=cv2.INTER_AREA).ravel() / 255.0 for p in paths])


def widest(mask_path: str) -> int:
    on = cv2.imread(str(mask_path), cv2.IMREAD_GRAYSCALE) > 0
    rows = on.any(axis=1)
    first, last = on.argmax(axis=1), on.shape[1] - 1 - on[:, ::-1].argmax(axis=1)
    return int((last - first + 1)[rows].max())


def _auc(y, score) -> float:
    return float(roc_auc_score(np.asarray(y, int), score))


def _fit_auc(train_x, train_y, test_x, test_y, cv: bool = False) -> float:
    model = LogisticRegressionCV(Cs=8, cv=5, max_iter=3000) if cv else LogisticRegression(max_iter=3000)
    model = make_pipeline(StandardScaler(), model).fit(train_x, np.asarray(train_y, int))
    return _auc(test_y, model.predict_proba(test_x)[:, 1])


def sklearn_rows(table: pd.DataFrame, seed: int = 0) -> dict[str, float]:
    """Every trivial predictor, fitted on train (or its 10 % subset), scored on test."""
    from cxrssl.data.splits import label_subset

    labelled = table[table["cardiomegaly"].notna()]
    train, test = labelled[labelled["split"] == "train"], labelled[labelled["split"] == "test"]
    subset = label_subset(train, 0.1, seed)
    y_tr, y_te = train["cardiomegaly"], test["cardiomegaly"]
    rows = {"age alone": _fit_auc(train[["age"]], y_tr, test[["age"]], y_te)}
    thumbs = {s: (thumbnails(train["path"], s), thumbnails(test["path"], s)) for s in (16, 32)}
    mean_tr, mean_te = thumbs[32][0].mean(1, keepdims=True), thumbs[32][1].mean(1, keepdims=True)
    rows["mean intensity"] = _fit_auc(mean_tr, y_tr, mean_te, y_te)
    width = test["lung_mask_path"].map(widest)
    rows["chest width → sex"] = _auc(test["sex"].eq("M"), width)
    in_subset = train.index.isin(subset.index)
    for size in (16, 32):
        tr, te = thumbs[size]
        rows[f"{size}×{size} thumbnail LR, 10 % labels"] = _fit_auc(tr[in_subset], y_tr[in_subset], te, y_te, cv=True)
        rows[f"{size}×{size} thumbnail LR, 100 % labels"] = _fit_auc(tr, y_tr, te, y_te, cv=True)
    rows["oracle: true CTR vs reader labels"] = _auc(y_te, test["ctr"])
    if "ctr_measured" in test.columns:
        rows["measured (film) CTR vs reader labels"] = _auc(y_te, test["ctr_measured"])
    rows["true CTR vs true labels (sanity)"] = _auc(test["cardiomegaly_true"], test["ctr"])
    rows["_counts"] = {"train images": len(train), "train patients": int(train["patient_id"].nunique()),
                       "10 % images": int(in_subset.sum()), "10 % patients": int(subset["patient_id"].nunique()),
                       "test images": len(test), "test positives": int(y_te.sum()),
                       "label noise (reader ≠ truth)": float((labelled["cardiomegaly"] != labelled["cardiomegaly_true"]).mean())}
    return rows


def cnn_row(overrides: list[str], out: Path) -> float:
    from cxrssl.commands.inprocess import run_command

    common = [*CNN_PRESET, *overrides, "data.synthetic.n_unlabelled_patients=0",
              f"mlflow.tracking_uri=sqlite:///{out}/mlflow.db"]
    _, ft = run_command("finetune", common, run_dir=out / "finetune")
    passed = [o for o in overrides if o.startswith(("mlflow.", "trainer.device", "data.num_workers"))]
    _, ev = run_command("evaluate", [f"checkpoint={ft['checkpoints']['best']}", "evaluate.n_boot=200",
                                     f"mlflow.tracking_uri=sqlite:///{out}/mlflow.db", *passed], run_dir=out / "evaluate")
    return float(ev["evaluation"]["metrics"]["auroc"]["value"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cnn", action="store_true", help="also fine-tune the CPU-preset CNN (minutes)")
    parser.add_argument("--out", type=Path, default=Path("bench_phantom"))
    parser.add_argument("overrides", nargs="*", help="data.* overrides, e.g. data.synthetic.preset=easy")
    args = parser.parse_args()
    from cxrssl.data.loaders import prepare_table

    start = time.perf_counter()
    table = prepare_table(data_config(args.overrides))
    generated = time.perf_counter() - start
    rows = sklearn_rows(table)
    if args.cnn:
        rows["supervised CNN, 100 % labels"] = cnn_row(args.overrides, args.out.resolve())
    counts = rows.pop("_counts")
    lines = ["| predictor (test split) | AUROC | target |", "|---|---|---|"]
    failed = []
    for name, value in rows.items():
        target = TARGETS.get(name)
        ok = target is None or (value <= target[1] if target[0] == "<=" else value >= target[1])
        failed += [] if ok else [name]
        lines.append(f"| {name} | {value:.3f} | {'' if target is None else ' '.join(map(str, target)) + (' ✓' if ok else ' ✗')} |")
    text = "\n".join(lines) + "\n\n" + ", ".join(f"{k}: {v:.3g}" if isinstance(v, float) else f"{k}: {v}"
                                                  for k, v in counts.items())
    print(text)
    print(f"\n(data ready in {generated:.0f} s; total {time.perf_counter() - start:.0f} s)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_phantom.json").write_text(json.dumps({"rows": rows, "counts": counts,
                                                             "overrides": args.overrides}, indent=2))
    if failed:
        print("TARGETS MISSED: " + ", ".join(failed))


if __name__ == "__main__":
    main()
