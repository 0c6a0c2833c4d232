#!/usr/bin/env python
"""The original work's comparison (seed Table 2), reproduced on any data source, with 95 % CIs.

Rows: random-init direct classifier under each imbalance strategy; transfer from the age, sex and
recon pretexts (linear probe and partial fine-tuning); the dual loss (recon + classification).
Columns: test AUROC [95 % CI], sensitivity, specificity, F1, MCC — at each label fraction.

    python scripts/compare_methods.py                        # small CPU preset on synthetic data
    python scripts/compare_methods.py --preset gpu data=nih data.root=/data/nih   # the real experiment

Extra arguments are Hydra overrides applied to every pretrain/finetune/evaluate run. All runs go to
MLflow as one sweep (experiment `cxrssl-comparison`); the table is printed and written to
`<out>/comparison.md` and `<out>/comparison.csv`.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

from cxrssl.commands.inprocess import run_command

PRESETS = {
    # ~2 cores: timm test_resnet at 64 px on ~1 000 synthetic patients.
    "cpu": {"common": ["backbone=tiny", "data.image_size=64", "data.synthetic.n_patients=1000",
                       "trainer.progress=false", "data.num_workers=0"],
            "pretrain": ["trainer.max_epochs=6"], "finetune": ["trainer.max_epochs=8"], "n_boot": 300},
    # one GPU: resnet18 at 224 px, more data and epochs.
    "gpu": {"common": ["backbone=resnet18", "data.image_size=224", "data.synthetic.n_patients=5000",
                       "data.num_workers=8"],
            "pretrain": ["trainer.max_epochs=30"], "finetune": ["trainer.max_epochs=30"], "n_boot": 1000},
}
IMBALANCE = ("none", "weighted", "oversample", "undersample", "oversample_weighted", "focal")


def method_rows() -> list[tuple[str, str | None, list[str]]]:
    """(row name, pretext whose checkpoint is loaded or None, finetune overrides)."""
    rows = [(f"direct · {imb}", None, [f"imbalance={imb}", "finetune.strategy=full"]) for imb in IMBALANCE]
    for pretext in ("age", "sex", "recon"):
        rows.append((f"{pretext} → linear", pretext, ["finetune.strategy=linear", "optimizer.lr=3e-3"]))
        rows.append((f"{pretext} → partial", pretext, ["finetune.strategy=partial", "finetune.backbone_lr_scale=1.0"]))
    rows.append(("dual loss (recon + cls)", "recon", ["finetune.strategy=full", "finetune.recon_weight=1.0"]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.01, 0.1, 1.0])
    parser.add_argument("--out", type=Path, default=Path("comparison"))
    parser.add_argument("--only", nargs="*", help="substrings of row names to run (default: all)")
    parser.add_argument("--reuse-pretrained", action="store_true",
                        help="reuse the pretext checkpoints listed in <out>/pretrained.json by an earlier run")
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every run")
    args = parser.parse_args()
    preset = PRESETS[args.preset]
    common = [*preset["common"], *args.overrides, "mlflow.experiment_name=cxrssl-comparison"]
    eval_common = [o for o in common if o.split("=")[0].split(".")[0].lstrip("+~") in ("data", "mlflow", "trainer")]
    out = args.out.resolve()
    sweep = out / "sweep"
    start, job = time.perf_counter(), 0

    def run(command: str, overrides: list[str], name: str) -> dict:
        nonlocal job
        job += 1
        print(f"\n=== [{job}] {command}: {name}", flush=True)
        run_dir = out / "runs" / f"{job:03d}-{command}"
        if run_dir.exists():  # a rerun into the same --out (--reuse-pretrained): run dirs are never shared
            run_dir = run_dir.with_name(f"{run_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}")
        return run_command(command, overrides, run_dir=run_dir, sweep_dir=sweep, job_num=job)[1]

    listed = out / "pretrained.json"
    pretrained = json.loads(listed.read_text()) if args.reuse_pretrained and listed.is_file() else {}
    rows = [r for r in method_rows() if not args.only or any(s in r[0] for s in args.only)]
    for pretext in sorted({p for _, p, _ in rows if p} - set(pretrained)):
        summary = run("pretrain", [*common, *preset["pretrain"], f"pretext={pretext}"], pretext)
        pretrained[pretext] = summary["checkpoints"]["best"]
    out.mkdir(parents=True, exist_ok=True)
    listed.write_text(json.dumps(pretrained, indent=2))

    results = []
    for fraction in args.fractions:
        for name, pretext, overrides in rows:
            source = pretrained[pretext] if pretext else "none"
            ft = run("finetune", [*common, *preset["finetune"], *overrides, f"pretrained={source}",
                                  f"data.label_fraction={fraction}"], f"{name} @ {fraction:g}")
            ev = run("evaluate", [*eval_common, f"checkpoint={ft['checkpoints']['best']}",
                                  f"evaluate.n_boot={preset['n_boot']}"], f"{name} @ {fraction:g}")
            m = ev["evaluation"]["metrics"]
            results.append({"method": name, "label_fraction": fraction, "n_train": ft["n_train"],
                            **{f"{k}{s}": m[k][c] for k in ("auroc", "sensitivity", "specificity", "f1", "mcc")
                               for s, c in (("", "value"), ("_lo", "ci_low"), ("_hi", "ci_high"))},
                            "finetune_run": ft["mlflow_run_id"], "evaluate_run": ev["mlflow_run_id"]})
            pd.DataFrame(results).to_csv(out / "comparison.csv", index=False)

    table = markdown_table(pd.DataFrame(results))
    minutes = (time.perf_counter() - start) / 60
    text = (f"# Method comparison ({args.preset} preset; {' '.join(args.overrides) or 'synthetic defaults'})\n\n"
            f"Test split, threshold chosen on validation (Youden). AUROC with a patient-level bootstrap 95 % CI.\n"
            f"Total run time: {minutes:.1f} min.\n\n{table}\n")
    (out / "comparison.md").write_text(text)
    print("\n" + text)
    print(f"written: {out / 'comparison.md'}  {out / 'comparison.csv'}  (MLflow experiment cxrssl-comparison)")


def _fmt(value) -> str:
    return "—" if value is None or pd.isna(value) else f"{value:.3f}"


def markdown_table(df: pd.DataFrame) -> str:
    lines = ["| label fraction | method | n train | AUROC [95 % CI] | sens | spec | F1 | MCC |",
             "|---|---|---|---|---|---|---|---|"]
    for _, r in df.iterrows():
        lines.append(f"| {r.label_fraction:g} | {r.method} | {r.n_train} | {_fmt(r.auroc)} "
                     f"[{_fmt(r.auroc_lo)}, {_fmt(r.auroc_hi)}] | {_fmt(r.sensitivity)} | {_fmt(r.specificity)} | "
                     f"{_fmt(r.f1)} | {_fmt(r.mcc)} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
