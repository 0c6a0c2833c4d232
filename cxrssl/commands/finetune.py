"""`cxrssl finetune`: transfer an encoder (any pretext run, weights file or none) to cardiomegaly."""
from __future__ import annotations

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from cxrssl.commands.report import finish_run, run_dir_from_hydra, start_run_tracking
from cxrssl.commands.training import checkpoint_artifacts, fit_task, report_lr_find, resume_point
from cxrssl.commands.validation import check_config
from cxrssl.engine.checkpoint import load_checkpoint, save_checkpoint
from cxrssl.engine.distributed import env_from_torchrun, init_from_env
from cxrssl.engine.precision import resolve_precision
from cxrssl.engine.seed import seed_from_config
from cxrssl.errors import ConfigError


def finetune_table(table: pd.DataFrame, label_fraction: float, seed: int,
                   scale_val: bool = False, require_both_classes: bool = True) -> pd.DataFrame:
    """Labelled rows only; the training split reduced to `label_fraction` of its patients
    (stratified, seeded: the same subset for every method at the same fraction and seed).
    `scale_val` (data.scale_val_labels) reduces the validation split by the same fraction, so the
    labels that pick the epoch and threshold are as scarce as the training labels.
    `require_both_classes=False` rebuilds the subset for reporting only (evaluate's cohort table),
    where a one-class train split is a fact to show, not a reason to stop."""
    from cxrssl.data.splits import label_subset

    labelled = table[table["cardiomegaly"].notna()]
    train = labelled[labelled["split"] == "train"]
    val = labelled[labelled["split"] == "val"]
    if not 0 < label_fraction <= 1:
        raise ConfigError(f"data.label_fraction={label_fraction}: must be in (0, 1]")
    if label_fraction < 1:
        train = label_subset(train, label_fraction, seed)
        if scale_val:
            val = label_subset(val, label_fraction, seed, split="val")
    for split, rows in (("train", train), ("val", val)) if require_both_classes else ():
        classes = sorted(rows["cardiomegaly"].unique())
        if len(classes) < 2:
            raise ConfigError(f"finetune: the {split} split has {len(rows)} labelled images of class(es) {classes}; "
                             "both classes are needed (raise data.label_fraction or data.val_fraction)")
    return pd.concat([train, val, labelled[~labelled["split"].isin(("train", "val"))]])


def label_seed(data_cfg) -> int:
    """`data.label_seed` (which label subset; repeats of a study vary it) or else `data.split_seed`."""
    seed = data_cfg.get("label_seed")
    return int(data_cfg.get("split_seed", 0) if seed is None else seed)


def trained_table(table: pd.DataFrame, data_cfg, require_both_classes: bool = True) -> pd.DataFrame:
    """The rows a checkpoint was fine-tuned and validated on, rebuilt from its data config."""
    return finetune_table(table, float(data_cfg.get("label_fraction", 1.0)), label_seed(data_cfg),
                          bool(data_cfg.get("scale_val_labels", False)), require_both_classes)


def _decoder_width(source: dict) -> int:
    """The recon checkpoint's decoder width (its first 1×1 conv has 2 × width outputs), else 64."""
    state = source.get("decoder_state") or {}
    weight = state.get("net.0.weight")
    return int(weight.shape[0]) // 2 if weight is not None else 64


def run(cfg: DictConfig) -> float | None:
    from cxrssl.commands.inference import predict_probabilities, predictions_table
    from cxrssl.commands.patient_guard import check_patients, overlap_tags, patient_record
    from cxrssl.data.loaders import build_dataloaders, data_summary, prepare_table, write_data_reports
    from cxrssl.evaluation import choose_threshold
    from cxrssl.models import Classifier
    from cxrssl.models.loading import load_encoder
    from cxrssl.tasks.cardiomegaly import CardiomegalyTask
    from cxrssl.tasks.imbalance import build_imbalance

    check_config(cfg)  # impossible values fail here, in well under a second
    init_from_env(str(cfg.trainer.device))  # torchrun: join the process group (no-op otherwise)
    run_dir = run_dir_from_hydra()
    resume_from, resume_run_id = resume_point(cfg, run_dir)
    seed = seed_from_config(cfg.trainer)
    encoder, source = load_encoder(cfg.backbone, cfg.pretrained, cfg.mlflow.tracking_uri)
    ft = cfg.finetune
    tags = {"pretext": source.get("pretext") or source["kind"], "backbone": cfg.backbone.name,
            "strategy": ft.strategy, "imbalance": cfg.imbalance.name, "data": cfg.data.source,
            "label_fraction": str(cfg.data.label_fraction), "pretrained": str(source.get("source"))}
    tracker = start_run_tracking(cfg, tags, resume_run_id)
    with tracker:
        precision = resolve_precision(cfg.trainer.device, cfg.trainer.amp)
        full_table = prepare_table(cfg.data)
        table = trained_table(full_table, cfg.data)
        pretrain_patients = source.pop("pretrain_patients", None)  # tensors: not for summary.json
        overlap = check_patients({"pretrain_patients": pretrain_patients},
                                 {s: table[table["split"] == s] for s in ("val", "test")},
                                 allow=bool(ft.get("allow_pretrain_overlap", False)),
                                 key="finetune.allow_pretrain_overlap", data_cfg=cfg.data)
        tracker.set_tags(overlap_tags(overlap))
        imbalance_cfg = OmegaConf.to_container(cfg.imbalance, resolve=True)
        built = {}

        def sampler_for(train_rows):  # the final training rows, in dataset order
            built["imbalance"] = build_imbalance(imbalance_cfg, train_rows["cardiomegaly"].to_numpy(), seed)
            return built["imbalance"].sampler

        loaders = build_dataloaders(cfg.data, table, seed=seed, splits=("train", "val"), train_sampler=sampler_for,
                                    strong_augment_positives=bool(imbalance_cfg.get("strong_augment", False)))
        imbalance = built["imbalance"]
        reports = write_data_reports(table, run_dir)  # after the loaders: it lists undecodable images too
        # A randomly initialised encoder has nothing to preserve: it trains at the head's LR.
        lr_scale = float(ft.backbone_lr_scale) if source["kind"] != "random" else 1.0
        task = CardiomegalyTask(encoder, imbalance, strategy=ft.strategy, trainable_blocks=ft.trainable_blocks,
                                backbone_lr_scale=lr_scale, recon_weight=ft.recon_weight,
                                dropout=ft.dropout, decoder_width=_decoder_width(source))
        if task.decoder is not None and "decoder_state" in source:
            task.decoder.load_state_dict(source.pop("decoder_state"))
        source.pop("decoder_state", None)
        meta = {"command": "finetune", "pretext": tags["pretext"], "pretrained": source,
                "pretrain_patients": pretrain_patients,
                "finetune_patients": patient_record(table[table["split"] == "train"], cfg.data),
                "label_fraction": float(cfg.data.label_fraction), "threshold_rule": str(cfg.evaluate.threshold)}
        result = fit_task(cfg, task, loaders, precision, tracker, run_dir, resume_from, meta)
        if "epochs_completed" not in result:  # lr_find=true: the LR range test only
            return report_lr_find(cfg, tracker, run_dir, result["lr_find"])
        if not env_from_torchrun().is_main:  # torchrun: rank 0 alone writes the run's outputs
            return result["best_value"]

        # Decision threshold: chosen on validation with the best checkpoint, saved inside it.
        ckpt_dir = run_dir / "checkpoints"
        best = load_checkpoint(ckpt_dir / "best.pt")
        task.load_state_dict(best["model"])
        model = Classifier(task.encoder)
        model.head = task.head
        val_rows = table[table["split"] == "val"]
        val_pred = predictions_table(val_rows, predict_probabilities(model, loaders["val"], precision, "val"))
        threshold = choose_threshold(val_pred["label"].to_numpy(), val_pred["probability"].to_numpy(),
                                     str(cfg.evaluate.threshold), split="val")
        val_pred = val_pred.assign(predicted=(val_pred["probability"] >= threshold).astype(int))
        val_pred.to_csv(run_dir / "val_predictions.csv", index=False)
        for name in ("best.pt", "last.pt"):
            state = load_checkpoint(ckpt_dir / name)
            state["meta"] = {**state["meta"], "threshold": float(threshold)}
            save_checkpoint(state, ckpt_dir / name)
        _write_model_card(cfg, tags, best, val_pred, threshold, ckpt_dir, len(table[table["split"] == "train"]))

        n_train = len(loaders["train"].dataset)
        headline = [f"finetune cardiomegaly | {cfg.backbone.name} from {tags['pretext']} | {ft.strategy} | "
                    f"{cfg.imbalance.name} | label fraction {cfg.data.label_fraction} ({n_train} train images)",
                    f"best:        val AUROC={result['best_value'] or float('nan'):.4f} at epoch {result['best_epoch']} "
                    f"({result['epochs_completed']} epochs, {result['train_time_s']:.0f}s)",
                    f"threshold:   {threshold:.4f} ({cfg.evaluate.threshold} on val), saved in best.pt",
                    f"checkpoints: {ckpt_dir / 'best.pt'}",
                    f"next:        cxrssl evaluate checkpoint={ckpt_dir / 'best.pt'}"]
        artifacts = [("data", reports["splits"]), ("data", reports["skipped"]),
                     ("predictions", run_dir / "val_predictions.csv")]
        artifacts += checkpoint_artifacts(cfg, ckpt_dir)  # mlflow.log_checkpoints=best|all|none
        finish_run(cfg, tracker, run_dir, {**result, "pretrain_overlap": overlap, "threshold": threshold, "threshold_rule": str(cfg.evaluate.threshold),
                                           "pretrained": source, "strategy": ft.strategy, "imbalance": imbalance.describe(),
                                           "label_fraction": float(cfg.data.label_fraction), "n_train": n_train,
                                           "data": data_summary(table),
                                           "checkpoints": {"best": ckpt_dir / "best.pt", "last": ckpt_dir / "last.pt"}},
                   headline, artifacts, monitor=result["monitor"], monitor_mode=result["monitor_mode"])
        return result["best_value"]


def _write_model_card(cfg: DictConfig, tags: dict, best: dict, val_pred, threshold: float, ckpt_dir,
                      n_train: int) -> None:
    """model_card.md/.json beside best.pt (Mitchell et al. headings), validation metrics with CIs."""
    from cxrssl.reporting.model_card import card_from_validation

    meta = best.get("meta", {})
    details = {"backbone": cfg.backbone.name, "pretext": tags["pretext"], "strategy": cfg.finetune.strategy,
               "imbalance": cfg.imbalance.name, "image_size": int(cfg.data.image_size),
               "checkpoint": str(ckpt_dir / "best.pt"), "best_epoch": best.get("best_epoch", best.get("epoch")),
               "mlflow_run_id": meta.get("mlflow_run_id"), "output": "P(cardiomegaly) = sigmoid(logit)"}
    training = {"source": str(cfg.data.source), "label_fraction": float(cfg.data.label_fraction),
                "n_train_images": n_train, "split_seed": int(cfg.data.split_seed),
                "splits": f"patient-level, val {cfg.data.val_fraction}, test {cfg.data.test_fraction}",
                "pretrained": tags.get("pretrained")}
    card_from_validation(val_pred, threshold, str(cfg.evaluate.threshold), details, training, ckpt_dir,
                         seed=int(cfg.trainer.seed))
