"""Curated mutants for `scripts/mutation_check.py`: small, realistic bugs in the modules that carry
the project's headline claims (threshold on validation, patient-level CIs, atomic checkpoints,
imbalance sampling, per-group LRs, early stopping, the Grad-CAM layer, nothing lost on bad input).

Each mutant is a list of exact (find, replace) edits on one file; `find` must occur exactly once
(a mutant whose text has been refactored away is reported as *stale*, not counted). `tests` are
the test files that are meant to catch it: `OLD` lists the suite as it was before
tests/regressions existed (the "before" column), `NEW` the regression tests added for issue 14.
The first 14 are the bugs the issue planted.
"""
from __future__ import annotations

from dataclasses import dataclass, field

R = "tests/regressions/"
THRESHOLD_FLOW = R + "test_threshold_flow.py"
COMMAND_CLAIMS = R + "test_command_claims.py"
UNITS = R + "test_claims_units.py"

OLD_COMMANDS = ["tests/commands/test_checkpoint_data.py", "tests/commands/test_learning.py",
                "tests/commands/test_explain_predict.py"]
OLD_EVAL = ["tests/evaluation/test_evaluation_thresholds.py", "tests/evaluation/test_evaluation_bootstrap.py",
            "tests/evaluation/test_evaluation_report.py"]
OLD_ENGINE = ["tests/engine/test_loop.py", "tests/engine/test_optim_precision.py"]
OLD_DATA = ["tests/data/test_dataloaders.py", "tests/data/test_splits.py", "tests/data/test_csv_source.py"]
OLD_TASK = ["tests/tasks/test_cardiomegaly_task.py"]
OLD_EXPLAIN = ["tests/explain/test_attributions.py"]


@dataclass
class Mutant:
    id: str
    path: str
    edits: list[tuple[str, str]]
    old: list[str]
    new: list[str]
    what: str
    planted: bool = False  # one of the 14
    tags: list[str] = field(default_factory=list)


def m(id, path, edits, old, new, what, planted=False):
    return Mutant(id, path, edits if isinstance(edits, list) else [edits], old, new, what, planted)


FT, EV, PR = "cxrssl/commands/finetune.py", "cxrssl/commands/evaluate.py", "cxrssl/commands/predict.py"
CK, SA, OP = "cxrssl/engine/checkpoint.py", "cxrssl/data/samplers.py", "cxrssl/engine/optim.py"
LO, LD, SP = "cxrssl/engine/loop.py", "cxrssl/data/loaders.py", "cxrssl/data/splits.py"
TH, BS, RP = "cxrssl/evaluation/thresholds.py", "cxrssl/evaluation/bootstrap.py", "cxrssl/evaluation/report.py"
BB, CM, AT = "cxrssl/models/backbones.py", "cxrssl/tasks/cardiomegaly.py", "cxrssl/explain/attributions.py"

MUTANTS: list[Mutant] = [
    # ---------------------------------------------------------------- the 14
    m("ft-threshold-on-test", FT, (
        'threshold = choose_threshold(val_pred["label"].to_numpy(), val_pred["probability"].to_numpy(),',
        '_t = table[table["split"] == "test"]; _l = build_dataloaders(cfg.data, table, seed=seed, splits=("test",))'
        '["test"]; _p = predictions_table(_t, predict_probabilities(model, _l, precision, "test")); '
        'threshold = choose_threshold(_p["label"].to_numpy(), _p["probability"].to_numpy(),'),
      OLD_COMMANDS, [THRESHOLD_FLOW], "finetune picks the threshold on the test split", True),
    m("ft-threshold-0.5", FT, (
        'val_pred = val_pred.assign(predicted=', 'threshold = 0.5; val_pred = val_pred.assign(predicted='),
      OLD_COMMANDS, [THRESHOLD_FLOW], "finetune threshold fixed at 0.5", True),
    m("ev-rule-on-evaluated-split", EV, (
        'val, _ = predict_split(model, table, data_cfg, "val", precision, int(cfg.trainer.seed))\n        val = val.dropna(',
        'val, _ = predict_split(model, table, data_cfg, str(data_cfg.get("split", "test")), precision, '
        'int(cfg.trainer.seed))\n        val = val.dropna('),
      OLD_COMMANDS, [THRESHOLD_FLOW], "evaluate.threshold=<rule> chosen on the evaluated split", True),
    m("pr-ignores-saved", PR, (
        'threshold = saved_threshold(info, cfg.predict.get("threshold"))',
        'threshold = float(cfg.predict.get("threshold") or 0.5)'),
      OLD_COMMANDS, [THRESHOLD_FLOW], "predict ignores the saved threshold (0.5)", True),
    m("report-image-bootstrap", RP, ('cluster: str | None = "patient_id", age_bands', 'cluster: str | None = None, age_bands'),
      OLD_EVAL, [UNITS], "evaluate_predictions bootstraps images, not patients", True),
    m("ckpt-direct-write", CK, [
        ('tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")', 'tmp = path'),
        ('        os.replace(tmp, path)\n', '        pass\n'),
        ('        if tmp.exists():\n            tmp.unlink()', '        pass')],
      OLD_ENGINE + ["tests/commands/test_checkpoint_data.py"], [UNITS], "checkpoint written in place", True),
    m("skipped-csv-empty", LD, ('pd.DataFrame(table.attrs.get("skipped", []), columns=', 'pd.DataFrame([], columns='),
      OLD_DATA, [COMMAND_CLAIMS], "skipped_rows.csv always empty", True),
    m("rows-skipped-zero", LD, ('counts["rows_skipped"] = len(table.attrs.get("skipped", []))', 'counts["rows_skipped"] = 0'),
      OLD_DATA, [COMMAND_CLAIMS], "summary rows_skipped always 0", True),
    m("ft-ignores-label-fraction", FT, ("    if label_fraction < 1:\n", "    if False:\n"),
      OLD_COMMANDS, [COMMAND_CLAIMS], "finetune ignores data.label_fraction", True),
    m("oversample-swapped", SA, [
        ("np.where(pos, positive_fraction / pos.sum(),", "np.where(pos, (1 - positive_fraction) / pos.sum(),"),
        ("(1 - positive_fraction) / (~pos).sum()", "positive_fraction / (~pos).sum()")],
      OLD_TASK, [UNITS], "oversampling fractions swapped", True),
    m("gradcam-layer2", BB, ("return self.stages[-1]", "return self.stages[2]"),
      OLD_EXPLAIN, [UNITS], "default Grad-CAM layer = layer2", True),
    m("optim-ignores-lr-scale", OP, ('g["lr"] = lr * g.get("lr_scale", 1.0)', 'g["lr"] = lr'),
      OLD_ENGINE + OLD_TASK, [UNITS], "optimizer ignores lr_scale", True),
    m("head-encoder-lr-swapped", CM, [
        ("(param_groups(head, weight_decay)", "(param_groups(head, weight_decay, self.backbone_lr_scale)"),
        ("weight_decay, self.backbone_lr_scale))", "weight_decay))")],
      OLD_TASK, [UNITS], "head and encoder LR scales swapped", True),
    m("early-stop-never", LO, ('return bool(es.get("enabled", False)) and', 'return False and'),
      OLD_ENGINE, [COMMAND_CLAIMS], "early stopping never fires", True),
    # ---------------------------------------------------------------- thresholds
    m("youden-argmin", TH, ("thr[_first_best(tpr - fpr)]", "thr[_first_best(fpr - tpr)]"), OLD_EVAL, [], "youden picks the worst point"),
    m("sens-last", TH, ("thr[np.flatnonzero(tpr >= target - 1e-12)[0]]", "thr[np.flatnonzero(tpr >= target - 1e-12)[-1]]"),
      OLD_EVAL, [], "sensitivity@X takes the lowest threshold"),
    m("spec-first", TH, ("return float(thr[ok[-1]])", "return float(thr[ok[0]])"), OLD_EVAL, [], "specificity@X takes the highest"),
    m("f1-argmin", TH, ("_first_best(f1[::-1])", "_first_best(-f1[::-1])"), OLD_EVAL, [], "f1 picks the worst point"),
    m("ties-lowest", TH, ("score >= score.max() - TIE_TOLERANCE)[0]", "score >= score.max() - TIE_TOLERANCE)[-1]"),
      OLD_EVAL + ["tests/evaluation/test_threshold_ties.py"], [], "ties resolved to the lowest threshold"),
    m("fixed-unchecked", TH, ("    if not 0.0 <= value <= 1.0:\n", "    if False:\n"), OLD_EVAL, [], "fixed threshold outside [0,1] accepted"),
    # ---------------------------------------------------------------- bootstrap
    m("boot-alpha", BS, ("quantiles = np.array([alpha / 2, 1 - alpha / 2])", "quantiles = np.array([alpha, 1 - alpha])"),
      OLD_EVAL, [UNITS], "90 % instead of 95 % intervals"),
    m("boot-ties", BS, ("(neg_below + 0.5 * neg_g)", "(neg_below + neg_g)"), OLD_EVAL, [UNITS], "AUROC ties count 1, not ½"),
    m("boot-last-cluster", BS, ("draws = rng.integers(0, n_clusters,", "draws = rng.integers(0, max(n_clusters - 1, 1),"),
      OLD_EVAL, [], "last patient never resampled"),
    m("boot-no-redraw", BS, ("            w[bad] = cluster_weights(codes, int(bad.sum()), rng)\n", "            break\n"),
      OLD_EVAL, [], "one-class resamples not redrawn"),
    m("boot-cluster-ignored", BS, ('codes = pd.factorize(df[cluster])[0] if cluster else', 'codes = np.arange(len(df)) if cluster else'),
      OLD_EVAL, [UNITS], "cluster column ignored"),
    # ---------------------------------------------------------------- splits
    m("splits-no-official", SP, ('out["split"] = out["split"].fillna(pid.map(known))', 'pass'),
      OLD_DATA, [], "official split not spread to the patient's other rows"),
    m("splits-no-min-one", SP, ("            if count == 0 and len(order) > len(wanted):\n", "            if False:\n"),
      OLD_DATA, [], "tiny fraction gives an empty split"),
    m("label-subset-not-nested", SP, ("members = keys[strata == stratum].sort_values()\n        count", "members = keys[strata == stratum].sample(frac=1.0)\n        count"),
      OLD_DATA, [], "label subsets not nested"),
    m("leakage-unchecked", SP, ("    if leaked:\n", "    if False:\n"), OLD_DATA, [], "leakage check disabled"),
    # ---------------------------------------------------------------- checkpoint
    m("ckpt-unsafe-load", CK, ("weights_only=True)", "weights_only=False)"), OLD_ENGINE, [], "pickles with code are loaded"),
    m("resume-oldest", CK, ("return candidates[-1]", "return candidates[0]"), OLD_ENGINE, [UNITS], "resume=true picks the oldest run"),
    # ---------------------------------------------------------------- samplers
    m("undersample-replace", SA, ("rng.choice(self.negatives, self.n_negatives, replace=False)", "rng.choice(self.negatives, self.n_negatives, replace=True)"),
      OLD_TASK, [UNITS], "undersampling repeats negatives"),
    m("undersample-ratio", SA, ("max(1, int(round(ratio * len(self.positives))))", "max(1, len(self.positives))"),
      OLD_TASK, [UNITS], "undersampling ignores ratio"),
    m("sampler-epoch-ignored", SA, ("g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)", "g = torch.Generator().manual_seed(self.seed)"),
      OLD_TASK, [UNITS], "oversampler draws the same batches every epoch"),
    # ---------------------------------------------------------------- optim
    m("decay-everything", OP, ("(no_decay if p.ndim <= 1 or name.endswith(\".bias\") else decay)", "decay"),
      OLD_ENGINE, [], "biases and norms decayed"),
    m("nesterov-ignored", OP, ('nesterov=bool(cfg.get("nesterov", False)) and momentum > 0', "nesterov=False"),
      OLD_ENGINE, ["tests/regressions/test_documented_commands.py::test_sgd_is_nesterov_and_scheduler_none_keeps_the_lr"],
      "SGD ignores nesterov"),
    m("warmup-off", OP, ("            return (step + 1) / self.warmup_steps\n", "            return 1.0\n"),
      OLD_ENGINE, [], "no warmup"),
    m("cosine-flat", OP, ("return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))", "return 1.0"),
      OLD_ENGINE, [], "cosine schedule never decays"),
    # ---------------------------------------------------------------- loop (best / early stopping)
    m("best-mode-flipped", LO, ('(value < best - min_delta if mode == "min" else value > best + min_delta)',
                                '(value > best + min_delta if mode == "min" else value < best - min_delta)'),
      OLD_ENGINE, [COMMAND_CLAIMS], "best.pt tracks the worst epoch"),
    m("bad-epochs-not-reset", LO, ("self.state.best, self.state.best_epoch, self.state.bad_epochs = float(value), epoch + 1, 0",
                                   "self.state.best, self.state.best_epoch = float(value), epoch + 1"),
      OLD_ENGINE, [COMMAND_CLAIMS], "patience not reset on improvement"),
    m("patience-off-by-one", LO, ('self.state.bad_epochs >= int(es.get("patience", 5))', 'self.state.bad_epochs > int(es.get("patience", 5))'),
      OLD_ENGINE, [COMMAND_CLAIMS], "early stopping one epoch late"),
    # ---------------------------------------------------------------- threshold flow extras
    m("ft-threshold-best-only", FT, ('for name in ("best.pt", "last.pt"):', 'for name in ("best.pt",):'),
      OLD_COMMANDS, [THRESHOLD_FLOW], "threshold not saved in last.pt"),
    m("ev-number-ignored", EV, ('return float(wanted), "fixed"', 'return saved_threshold(info, None), "fixed"'),
      OLD_COMMANDS, [THRESHOLD_FLOW], "evaluate.threshold=<number> ignored"),
    m("ev-default-0.5", EV, ("return saved_threshold(info, None), f\"{meta.get('threshold_rule', 'saved')}",
                             "return 0.5, f\"{meta.get('threshold_rule', 'saved')}"),
      OLD_COMMANDS, [THRESHOLD_FLOW], "evaluate ignores the saved threshold"),
    m("ft-rule-ignored", FT, ('str(cfg.evaluate.threshold), split="val")', '"youden", split="val")'),
      OLD_COMMANDS, [COMMAND_CLAIMS], "finetune ignores evaluate.threshold"),
    # ---------------------------------------------------------------- partial fine-tuning, explain layer
    m("partial-first-blocks", CM, ("stages[len(stages) - n_train:]", "stages[:n_train]"),
      OLD_TASK, [], "partial fine-tuning trains the first blocks"),
    m("resolve-layer-first-stage", AT, ("        return encoder.gradcam_layer\n", "        return encoder.stages[0]\n"),
      OLD_EXPLAIN, [UNITS], "explain's default layer is the first stage"),
]
