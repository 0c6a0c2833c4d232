#!/usr/bin/env python
"""The label-efficiency study: does self-supervised pretraining help when labels are scarce, and which pretext?

For every method × label fraction × repeat (repeat r = its own seed and its own label subset, shared
by every method, so rows are paired), the test-set predictions are scored against the *matched*
random-init control on the same test patients (paired patient bootstrap over patients and repeats,
Holm across the table). The harness is validated on the synthetic phantom, where the truth is known:

* positive control: an encoder pretrained on the unlabelled pool to regress the true CTR (``pretext=age``
  on a table whose ``age`` is 100 × CTR) must beat random init, CI-separated, at the low fractions;
* negative control: an encoder pretrained on the same pool to predict a random per-patient label
  (``pretext=sex`` with a coin flip per patient as ``sex``) must not.
Otherwise the table is marked UNDERPOWERED or BIASED, loudly.

Protocol choices (docs/results.md): pretexts train on the training split plus the unlabelled pool
(``data.pretrain_pool``); frozen-feature rows are logistic-regression probes (scikit-learn, seconds);
fine-tuning rows get the same number of optimiser steps at every fraction (epochs = steps / batches);
validation labels are reduced by the same fraction as the training labels (``data.scale_val_labels``)
and pick the threshold (Youden); trivial baselines (age alone, 16 × 16 thumbnail logistic
regression) are rows too. Pretext rows are named in the preset (``pretexts``), so new pretexts
(SimCLR, MoCo, BYOL, DINO, MAE) are rows by name.

    python scripts/compare_methods.py --preset micro --out /tmp/study    # minutes: a smoke test of the harness
    python scripts/compare_methods.py --preset cpu                       # the CPU study (see docs/results.md)
    python scripts/compare_methods.py --preset cpu_all --out comparison --resume   # + MoCo/BYOL/DINO/MAE rows,
                                                                                   # reusing the cpu run's encoders
    python scripts/compare_methods.py --preset gpu data=nih data.root=/data/nih
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

from cxrssl.commands.inprocess import compose_config, run_command

SMALL_VIT = ["backbone=vit_tiny", "backbone.timm_kwargs.patch_size=8"]  # MAE at 32-64 px: 8-pixel patches
PRESETS = {
    "micro": {"data": ["data.synthetic.n_patients=160", "data.synthetic.n_unlabelled_patients=160",
                       "data.synthetic.native_size=96", "data.image_size=32"],
              "backbone": "tiny", "pretexts": ["recon"], "pretrain_epochs": 1, "fractions": [0.1, 1.0],
              "repeats": 3, "finetune": [], "steps": 20, "n_boot": 300,
              "mae_backbone": SMALL_VIT},
    "cpu": {"data": ["data.synthetic.n_patients=600", "data.synthetic.n_unlabelled_patients=1800",
                     "data.synthetic.native_size=128", "data.image_size=64"],
            "backbone": "tiny", "pretexts": ["recon", "age", "sex", "simclr"], "pretrain_epochs": 4,
            "fractions": [0.02, 0.1, 1.0], "repeats": 3, "n_boot": 1000, "steps": 150,
            "finetune": [("random init", "full"), ("recon", "full")]},
    "gpu": {"data": ["data.synthetic.n_patients=5000", "data.image_size=224", "data.num_workers=8"],
            "backbone": "resnet18", "pretexts": ["recon", "age", "sex", "simclr", "moco", "byol", "dino", "mae"],
            "pretrain_epochs": 30, "fractions": [0.01, 0.03, 0.1, 1.0], "repeats": 5, "n_boot": 2000, "steps": 1500,
            "finetune": [(p, s) for p in ("random init", "recon", "simclr") for s in ("linear", "partial", "full")],
            "mae_backbone": ["backbone=vit_small"]},
}
# the CPU preset plus every self-supervised method as a frozen-probe row (the `cpu` preset's measured
# 48.7 min are for its own rows; run with --resume into the cpu run's --out to reuse its encoders)
PRESETS["cpu_all"] = {**PRESETS["cpu"], "pretexts": [*PRESETS["cpu"]["pretexts"], "moco", "byol", "dino", "mae"],
                      "mae_backbone": SMALL_VIT}
RANDOM = "random init"
PROBE = "linear probe"


def _cell(method, fraction, control):
    return {"method": method, "fraction": fraction, "control": control, "probs": [], "thresholds": []}


class Study:
    def __init__(self, args, preset: dict):
        self.args, self.preset, self.out = args, preset, args.out.resolve()
        self.common = [*preset["data"], f"backbone={preset['backbone']}", "data.num_workers=0",
                       "trainer.progress=false", "mlflow.experiment_name=cxrssl-comparison", *args.overrides]
        self.job = 0

    def run(self, command: str, overrides: list[str], name: str) -> dict:
        self.job += 1
        print(f"=== [{self.job}] {command}: {name}", flush=True)
        run_dir = self.out / "runs" / f"{self.job:03d}-{command}"
        if run_dir.exists():  # a rerun into the same --out: run dirs are claimed exclusively, never shared
            run_dir = run_dir.with_name(f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        return run_command(command, overrides, run_dir=run_dir, sweep_dir=self.out / "sweep", job_num=self.job)[1]

    def data(self) -> tuple[object, pd.DataFrame]:
        from cxrssl.data.loaders import prepare_table

        cfg = compose_config("finetune", self.common)
        table = prepare_table(cfg.data)
        return cfg, table[table["cardiomegaly"].notna()].reset_index(drop=True)

    def pretrain(self, pretext: str, extra: list[str] = (), common: list[str] | None = None,
                 name: str | None = None) -> str:
        """Pretrain one encoder, or (``--resume``) reuse the checkpoint an earlier call recorded in
        ``pretrained.json`` under the same name; every new checkpoint is recorded at once, so a
        study cut off by a time limit or a preemption loses at most the encoder in progress."""
        name = name or pretext
        record = self.out / "pretrained.json"
        done = json.loads(record.read_text()) if record.exists() else {}
        if self.args.resume and name in done and Path(done[name]).is_file():
            print(f"=== reusing {name}: {done[name]}", flush=True)
            return done[name]
        backbone = self.backbone_for(pretext)
        summary = self.run("pretrain", [*(self.common if common is None else common), f"pretext={pretext}",
                                        f"trainer.max_epochs={self.preset['pretrain_epochs']}", *backbone, *extra],
                           name)
        done[name] = str(summary["checkpoints"]["best"])
        record.write_text(json.dumps(done, indent=2))
        return done[name]

    def control_checkpoints(self, cfg) -> dict[str, str]:
        """Positive/negative-control encoders, pretrained through data=csv on train + pool with a
        swapped target column (see the module docstring)."""
        from cxrssl.data.loaders import prepare_table
        from cxrssl.data.pretrain_pool import pretrain_table

        table = pretrain_table(cfg.data, prepare_table(cfg.data))
        rows = table[table["split"].isin(("train", "val"))].copy()
        root = Path(str(rows["path"].iloc[0])).parents[1]
        rows["path"] = [str(Path(p).relative_to(root)) for p in rows["path"]]
        rng = np.random.default_rng(12345)
        coin = {pid: ("M" if rng.random() < 0.5 else "F") for pid in sorted(rows["patient_id"].unique())}
        out = self.out / "controls"
        out.mkdir(parents=True, exist_ok=True)
        keep = ["image_id", "path", "patient_id", "view", "split"]
        positive = rows[keep].assign(age=100 * rows["ctr"].to_numpy(float), sex=rows["sex"])
        negative = rows[keep].assign(age=rows["age"], sex=rows["patient_id"].map(coin))
        positive.to_csv(out / "positive.csv", index=False)
        negative.to_csv(out / "negative.csv", index=False)
        base = [o for o in self.common if not o.startswith("data.")] + [
            "data=csv", f"data.root={root}", "data.resize_mode=stretch", "data.equalize=none",
            "data.pretrain_pool=train", f"data.image_size={cfg.data.image_size}", "data.num_workers=0"]
        positive, negative = "positive control (CTR regression)", "negative control (random labels)"
        return {positive: self.pretrain("age", [f"data.csv={out / 'positive.csv'}"], base, positive),
                negative: self.pretrain("sex", [f"data.csv={out / 'negative.csv'}"], base, negative)}

    def backbone_for(self, pretext: str) -> list[str]:
        """MAE needs a ViT (``mae_backbone`` of the preset); every other pretext uses the preset's CNN."""
        return list(self.preset.get("mae_backbone", ["backbone=vit_tiny"])) if pretext == "mae" else []

    def embeddings(self, cfg, table: pd.DataFrame, checkpoint: str | None, pretext: str = "",
                   seed: int = 0) -> np.ndarray:
        """Frozen features of every row. A random-init encoder (``checkpoint=None``) is drawn from
        `seed` *before* it is built: drawn from whatever the global RNG held after the pretraining
        runs, the control changed with the number of pretexts in the call (seen: its 100 % probe
        AUROC moved 0.626 → 0.584 between two calls, enough to flip the negative-control verdict)."""
        import torch

        from cxrssl.commands.probe_embed import extract_embeddings
        from cxrssl.models.loading import load_encoder

        if self.backbone_for(pretext):
            cfg = compose_config("finetune", [*self.common, *self.backbone_for(pretext)])

        torch.manual_seed(seed)
        encoder, _ = load_encoder(cfg.backbone, checkpoint or "none", cfg.mlflow.get("tracking_uri"))
        with torch.no_grad():
            return extract_embeddings(encoder, table, cfg.data, torch.device("cpu"))

    def subsets(self, table: pd.DataFrame, fraction: float, repeat: int) -> tuple[np.ndarray, np.ndarray]:
        from cxrssl.commands.finetune import finetune_table

        chosen = finetune_table(table, fraction, repeat, scale_val=True)
        ids = set(chosen["image_id"])
        return (table["split"].eq("train") & table["image_id"].isin(ids)).to_numpy(), \
            (table["split"].eq("val") & table["image_id"].isin(ids)).to_numpy()


def _probe(x, y, train, val, test):
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from cxrssl.evaluation import choose_threshold

    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=3000, class_weight="balanced"))
    model.fit(x[train], y[train].astype(int))
    p_val, p_test = model.predict_proba(x[val])[:, 1], model.predict_proba(x[test])[:, 1]
    threshold = choose_threshold(y[val], p_val, "youden", split="val") if len(np.unique(y[val])) == 2 else 0.5
    return p_test, threshold


def _thumbnails(paths: pd.Series, size: int = 16) -> np.ndarray:
    import cv2

    return np.stack([cv2.resize(cv2.imread(str(p), cv2.IMREAD_GRAYSCALE), (size, size),
                                interpolation=cv2.INTER_AREA).ravel() / 255.0 for p in paths])


def finetune_cells(study: Study, table, checkpoints, cells, fractions, repeats, test_ids):
    """Fine-tuning rows: equal optimiser steps per fraction, scaled validation labels."""
    from cxrssl.commands.finetune import finetune_table

    batch = 32
    for source, strategy in study.preset["finetune"]:
        method = f"{source} → {strategy}"
        control = None if source == RANDOM else f"{RANDOM} → {strategy}"
        for fraction in fractions:
            cell = cells.setdefault((method, fraction), _cell(method, fraction, control))
            for r in range(repeats):
                n = int((finetune_table(table, fraction, r, scale_val=True)["split"] == "train").sum())
                epochs = max(1, math.ceil(study.preset["steps"] / math.ceil(n / batch)))
                pretrained = "none" if source == RANDOM else checkpoints[source]
                ft = study.run("finetune", [*study.common, f"pretrained={pretrained}", f"finetune.strategy={strategy}",
                                            f"data.label_fraction={fraction}", f"data.label_seed={r}",
                                            "data.scale_val_labels=true", f"trainer.seed={r}", f"data.batch_size={batch}",
                                            f"trainer.max_epochs={epochs}"], f"{method} @ {fraction:g} r{r} ({epochs} ep)")
                ev = study.run("evaluate", [f"checkpoint={ft['checkpoints']['best']}", "evaluate.n_boot=10",
                                            *[o for o in study.common if o.startswith(("mlflow.", "trainer."))]],
                               f"{method} @ {fraction:g} r{r}")
                pred = pd.read_csv(Path(ev["evaluation"]["files"]["predictions"])).set_index("image_id")
                cell["probs"].append(pred.loc[test_ids, "probability"].to_numpy(float))
                cell["thresholds"].append(float(ev["evaluation"]["threshold"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--out", type=Path, default=Path("comparison"))
    parser.add_argument("--repeats", type=int, help="override the preset's repeats")
    parser.add_argument("--pretexts", help="comma-separated pretexts instead of the preset's list (e.g. simclr,mae)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the encoders recorded in OUT/pretrained.json by an earlier call (same preset data)")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args()
    preset = dict(PRESETS[args.preset])
    if args.pretexts:
        preset["pretexts"] = [p.strip() for p in args.pretexts.split(",") if p.strip()]
    start = time.perf_counter()
    study = Study(args, preset)
    study.out.mkdir(parents=True, exist_ok=True)
    cfg, table = study.data()
    repeats, fractions = args.repeats or preset["repeats"], preset["fractions"]
    checkpoints, study.failed = {}, {}
    for pretext in preset["pretexts"]:  # a pretext that cannot run is reported, not fatal
        try:
            checkpoints[pretext] = study.pretrain(pretext)
        except Exception as error:  # noqa: BLE001 - any failure of one row
            study.failed[pretext] = f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"
            print(f"!!! pretext {pretext} failed and is left out: {study.failed[pretext]}", flush=True)
    synthetic = str(cfg.data.source) == "synthetic"
    if synthetic:
        checkpoints.update(study.control_checkpoints(cfg))

    y = table["cardiomegaly"].to_numpy(float)
    test = table["split"].eq("test").to_numpy()
    # the matched control: a different random encoder in each repeat, so its CI covers the init draw
    features = {f"{RANDOM} → {PROBE}": [study.embeddings(cfg, table, None, seed=r) for r in range(repeats)]}
    for name, path in checkpoints.items():
        features[f"{name} → {PROBE}"] = study.embeddings(cfg, table, path, name)
    features["age only (logistic regression)"] = table[["age"]].to_numpy(float)
    features["16×16 thumbnail logistic regression"] = _thumbnails(table["path"])
    cells: dict = {}
    for fraction in fractions:
        for r in range(repeats):
            train, val = study.subsets(table, fraction, r)
            for method, x in features.items():
                control = None if method.startswith(RANDOM) or "→" not in method else f"{RANDOM} → {PROBE}"
                cell = cells.setdefault((method, fraction), _cell(method, fraction, control))
                p_test, threshold = _probe(x[r] if isinstance(x, list) else x, y, train, val, test)
                cell["probs"].append(p_test)
                cell["thresholds"].append(threshold)
                sub = table[train]
                cell.update(n_patients=int(sub["patient_id"].nunique()), n_images=int(train.sum()),
                            n_positive_patients=int(sub.loc[sub["cardiomegaly"] == 1, "patient_id"].nunique()))
    test_ids = table.loc[test, "image_id"].tolist()
    finetune_cells(study, table, checkpoints, cells, fractions, repeats, test_ids)
    for (method, fraction), cell in cells.items():
        if "n_patients" not in cell:
            ref = cells[(f"{RANDOM} → {PROBE}", fraction)]
            cell.update({k: ref[k] for k in ("n_patients", "n_images", "n_positive_patients")})
    write_outputs(study, cfg, table, list(cells.values()), test, start, synthetic)


def write_outputs(study, cfg, table, cells, test, start, synthetic) -> None:
    from cxrssl.evaluation.study import harness_verdict, label_efficiency_figure, markdown_table, summarise_cells

    rows = table[test]
    summary = summarise_cells(cells, rows["cardiomegaly"].to_numpy(float), pd.factorize(rows["patient_id"])[0],
                              n_boot=study.preset["n_boot"])
    verdict = harness_verdict(summary) if synthetic else {"warnings": [], "positive_separates": None,
                                                           "negative_separates": None}
    minutes = (time.perf_counter() - start) / 60
    out = study.out
    summary.to_csv(out / "comparison.csv", index=False)
    figure = label_efficiency_figure(summary, out / "label_efficiency.png")
    banner = "\n".join(f"> **WARNING — {w}**" for w in verdict["warnings"]) or \
        "> Harness check passed: the positive control separates at the low fractions, the negative control does not."
    text = (f"# Label-efficiency study ({study.args.preset} preset; {' '.join(study.args.overrides) or 'synthetic defaults'})\n\n"
            f"{banner}\n\nTest split: {len(rows)} images, {rows['patient_id'].nunique()} patients, "
            f"{int(rows['cardiomegaly'].sum())} positive images. Repeats: {summary['repeats'].max()} per cell (own seed and "
            f"label subset). AUROC CI: patient × repeat bootstrap ({study.preset['n_boot']} resamples); ΔAUROC: paired over "
            f"the same patients and repeats vs the named control; p Holm-adjusted across the table. Threshold: Youden on "
            f"the scaled validation labels. Run time {minutes:.1f} min.\n\n{markdown_table(summary)}\n\n"
            + "".join(f"Left out (pretraining failed): {k} — {v}\n\n" for k, v in study.failed.items()) +
            f"![label efficiency]({figure.name})\n")
    (out / "comparison.md").write_text(text)
    (out / "verdict.json").write_text(json.dumps({**verdict, "minutes": minutes}, indent=2))
    print("\n" + text)
    for warning in verdict["warnings"]:
        print(f"\n!!! {warning} !!!")
    _log_mlflow(cfg, study, summary, [out / "comparison.md", out / "comparison.csv", figure], verdict, minutes)
    print(f"written: {out / 'comparison.md'}  {out / 'comparison.csv'}  {figure}")


def _log_mlflow(cfg, study, summary, files, verdict, minutes) -> None:
    """One parent run for the sweep's table, a nested run per row (the training runs are in the same experiment)."""
    import mlflow

    mlflow.set_tracking_uri(str(cfg.mlflow.tracking_uri))
    mlflow.set_experiment("cxrssl-comparison")
    with mlflow.start_run(run_name=f"study-{study.args.preset}"):
        mlflow.set_tags({"study": study.args.preset, "underpowered": str(not verdict.get("positive_separates", True)),
                         "biased": str(bool(verdict.get("negative_separates")))})
        mlflow.log_metric("minutes", minutes)
        for path in files:
            mlflow.log_artifact(str(path))
        for _, r in summary.iterrows():
            with mlflow.start_run(run_name=f"{r.method} @ {r.label_fraction:g}", nested=True):
                mlflow.log_params({"method": r.method, "label_fraction": r.label_fraction, "control": r.control})
                mlflow.log_metrics({k: float(r[k]) for k in ("auroc", "auroc_lo", "auroc_hi", "delta", "delta_lo",
                                                              "delta_hi", "p_holm") if np.isfinite(r[k])})


if __name__ == "__main__":
    main()
