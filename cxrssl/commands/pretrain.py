"""`cxrssl pretrain`: train an encoder on a self-supervised pretext task (age, sex, recon, or the
registered methods simclr, moco, byol, dino, mae — see cxrssl/tasks/registry.py)."""
from __future__ import annotations

from omegaconf import DictConfig

from cxrssl.commands.report import finish_run, run_dir_from_hydra, start_run_tracking
from cxrssl.commands.training import checkpoint_artifacts, fit_task, report_lr_find, resume_point
from cxrssl.commands.validation import check_config
from cxrssl.engine.distributed import env_from_torchrun, init_from_env
from cxrssl.engine.precision import resolve_precision
from cxrssl.engine.seed import seed_from_config


def run(cfg: DictConfig) -> float | None:
    """Returns the best validation value of the task's monitor (Hydra sweepers optimise it)."""
    from cxrssl.data.loaders import build_dataloaders, data_summary, prepare_table, write_data_reports
    from cxrssl.commands.patient_guard import patient_record
    from cxrssl.models.loading import backbone_option
    from cxrssl.tasks import build_pretext_task

    check_config(cfg)  # impossible values fail here, in well under a second
    init_from_env(str(cfg.trainer.device))  # torchrun: join the process group (no-op otherwise)
    run_dir = run_dir_from_hydra()
    resume_from, resume_run_id = resume_point(cfg, run_dir)
    tags = {"pretext": cfg.pretext.name, "backbone": cfg.backbone.name, "data": cfg.data.source}
    tracker = start_run_tracking(cfg, tags, resume_run_id)
    with tracker:
        seed_from_config(cfg.trainer)
        precision = resolve_precision(cfg.trainer.device, cfg.trainer.amp)
        from cxrssl.data.pretrain_pool import pool_summary, pretrain_table

        table = pretrain_table(cfg.data, prepare_table(cfg.data))  # + unlabelled pool (data.pretrain_pool)
        task = build_pretext_task(cfg.pretext, cfg.backbone, table[table["split"] == "train"])
        loaders = build_dataloaders(cfg.data, table, seed=int(cfg.trainer.seed), splits=("train", "val"))
        if cfg.pretext.get("views") is not None:  # joint-embedding methods: N augmented views per image
            from cxrssl.data.views import with_views

            loaders = with_views(loaders, cfg.pretext.views, int(cfg.data.image_size), int(cfg.trainer.seed))
        reports = write_data_reports(table, run_dir)  # after the loaders: it lists undecodable images too
        result = fit_task(cfg, task, loaders, precision, tracker, run_dir, resume_from,
                          meta={"command": "pretrain", "pretext": cfg.pretext.name,
                                # which patients trained this encoder: finetune/evaluate refuse them as val/test
                                "pretrain_patients": patient_record(table[table["split"] == "train"], cfg.data)})
        if "epochs_completed" not in result:  # lr_find=true: the LR range test only
            return report_lr_find(cfg, tracker, run_dir, result["lr_find"])
        if not env_from_torchrun().is_main:  # torchrun: rank 0 alone writes the run's outputs
            return result["best_value"]
        ckpt = run_dir / "checkpoints"
        artifacts = [("data", reports["splits"]), ("data", reports["skipped"])]
        artifacts += checkpoint_artifacts(cfg, ckpt)  # mlflow.log_checkpoints=best|all|none
        final = result["final"]
        headline = [f"pretrain {cfg.pretext.name} | {cfg.backbone.name} | {result['epochs_completed']} epochs in "
                    f"{result['train_time_s']:.0f}s ({result['train_images_per_s'] or 0:.0f} img/s train)",
                    "final val:   " + "  ".join(_shown(k[4:], v) for k, v in final.items() if k.startswith("val/")),
                    f"best:        {_shown(result['monitor'], result['best_value'])} at epoch {result['best_epoch']}",
                    f"checkpoints: {ckpt / 'last.pt'}  {ckpt / 'best.pt'}",
                    f"next:        cxrssl finetune pretrained={ckpt / 'best.pt'} backbone={backbone_option(cfg.backbone.name)}"]
        finish_run(cfg, tracker, run_dir, {**result, "pretext": cfg.pretext.name, "backbone": cfg.backbone.name,
                                           "data": {**data_summary(table), **pool_summary(table)},
                                           "checkpoints": {"last": ckpt / "last.pt", "best": ckpt / "best.pt"}},
                   headline, artifacts, monitor=result["monitor"], monitor_mode=result["monitor_mode"])
        return result["best_value"]


#: Units of the metrics a reader could misread as fractions (age errors are in years).
UNITS = {"mae": "years", "mae_mean_baseline": "years", "loss": ""}


def _shown(name: str, value) -> str:
    """`name=value unit` for the closing lines; a missing value (every epoch NaN) prints as n/a."""
    key = name.split("/")[-1]
    if value is None or isinstance(value, str):
        return f"{name}=n/a"
    unit = UNITS.get(key, "")
    return f"{name}={value:.4g}" + (f" {unit}" if unit else "")
