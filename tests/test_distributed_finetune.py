"""DDP beyond pretrain, with 2 real gloo processes under torchrun on CPU: finetune end to end,
sharded (unpadded) validation whose metrics every rank computes over the full set, the imbalance
samplers sharded by rank, SyncBatchNorm, resume after a signal on one rank, a failure on one rank.

Rank-side code: tests/ddp_worker.py → tests/ddp_finetune_worker.py.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from sklearn.metrics import roc_auc_score

from cxrssl.engine import distributed as D

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def torchrun(mode: str, tmp_path: Path, check: bool = True) -> dict | subprocess.CompletedProcess:
    out = tmp_path / f"{mode}.json"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(ROOT / "tests" / "ddp_worker.py"), mode, str(out), str(tmp_path)],
                          env=ENV, capture_output=True, text=True, timeout=600)
    if not check:
        return done
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    return torchrun("quick", tmp_path_factory.mktemp("ddp_quick"))


# ---------------------------------------------------------------- in-process pieces
def test_eval_shard_splits_without_padding():
    for n in (13, 1, 0):
        shards = [list(D.EvalShard(range(n), 2, r)) for r in range(2)]
        assert sorted(shards[0] + shards[1]) == list(range(n))  # disjoint, covering, nothing repeated
        assert [len(D.EvalShard(range(n), 2, r)) for r in range(2)] == [len(s) for s in shards]
    loader = torch.utils.data.DataLoader(list(range(13)), batch_size=4)
    assert D.shard_eval_loader(loader, D.DistEnv()) is loader


def test_sync_batchnorm_alone_is_a_logged_no_op():
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.BatchNorm2d(2))
    lines = []
    assert D.sync_batchnorm(model, True, "cpu", log=lines.append) is model
    assert isinstance(model[1], torch.nn.BatchNorm2d) and len(lines) == 1 and "single process" in lines[0]
    assert D.sync_batchnorm(model, False, "cpu", log=lines.append) is model and len(lines) == 1


@pytest.mark.parametrize("device_type, cls", [("cpu", "CPUSyncBatchNorm"), ("cuda", "SyncBatchNorm")])
def test_sync_batchnorm_conversion_keeps_weights_and_frozen_layers(device_type, cls):
    """The layer swap behind trainer.sync_batchnorm (torch's SyncBatchNorm on CUDA, ours on CPU):
    running statistics and affine weights carried over (same eval output, same state_dict keys, so
    checkpoints load into plain BatchNorm), requires_grad kept, and a task's frozen BatchNorm layers
    (strategy=partial keeps their pretrained statistics in eval) left as they are."""
    from cxrssl.engine.sync_bn import convert
    from cxrssl.models import create_encoder
    from cxrssl.tasks.cardiomegaly import CardiomegalyTask
    from cxrssl.tasks.imbalance import Imbalance

    torch.manual_seed(0)
    task = CardiomegalyTask(create_encoder("test_resnet"), Imbalance("none"), strategy="partial", trainable_blocks=1)
    task.train()
    task(torch.rand(4, 1, 32, 32))  # non-trivial running statistics
    task.eval()
    x = torch.rand(3, 1, 32, 32)
    before, keys = task(x)["logit"], list(task.state_dict())
    frozen = {id(m) for m in task._frozen_norms}
    assert frozen
    _, n = convert(task, device_type, frozenset(frozen))
    synced = [m for m in task.modules() if type(m).__name__ == cls]
    assert n == len(synced) > 0 and not {id(m) for m in synced} & frozen
    assert all(id(m) in frozen for m in task.modules()
               if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and type(m).__name__ != cls)
    assert torch.allclose(task(x)["logit"], before, atol=1e-6) and list(task.state_dict()) == keys
    task.train()
    assert all(not m.training for m in task._frozen_norms) and all(m.training for m in synced)
    assert all(p.requires_grad for m in synced for p in m.parameters())


# ---------------------------------------------------------------- 2 ranks
@pytest.mark.parametrize("name", ["oversample", "undersample"])
def test_imbalance_samplers_shard_by_rank(quick, name):
    """Each rank's epoch is every 2nd index of the one-process draw (same seed, same epoch):
    interleaved they give back the whole draw (covering, no position twice), equal sizes and batch
    counts per rank, a fresh draw each epoch."""
    ranks = quick["samplers"][name]
    for epoch in (0, 1):
        full = ranks[0][epoch]["full"]
        assert ranks[1][epoch]["full"] == full
        mine = [r[epoch]["mine"] for r in ranks]
        assert len(mine[0]) == len(mine[1]) == math.ceil(len(full) / 2)
        assert [x for pair in zip(*mine) for x in pair][:len(full)] == full
        assert ranks[0][epoch]["batches"] == ranks[1][epoch]["batches"] >= 1
    assert ranks[0][0]["full"] != ranks[0][1]["full"]


def test_sync_batchnorm_equals_one_process_on_the_global_batch(quick):
    """Train-mode step, 2 ranks × 4 images vs one process × 8. SyncBatchNorm: running statistics
    within 1e-5 and the gradient within 1e-5 × the largest entry (float32 summation order);
    plain BatchNorm: ranks disagree and both differ by far more."""
    sync, plain, scale = quick["syncbn"]["sync"], quick["syncbn"]["plain"], quick["syncbn"]["ref_grad_max"]
    assert sync["converted"] > 0 and plain["converted"] == 0
    assert sync["bn_ranks_equal"] and sync["bn_diff"] <= 1e-5, sync
    assert sync["grad_diff"] <= 1e-5 * max(scale, 1.0), sync
    assert not plain["bn_ranks_equal"] and plain["bn_diff"] > 1e-2 and plain["grad_diff"] > 1e-2, plain


def test_finetune_ranks_agree_and_validate_the_whole_set(tmp_path):
    """CardiomegalyTask under the Trainer with early stopping: 13 validation images split 7/6 by
    rank (no padding); every rank's val AUROC, loss and prevalence equal the final model's on all
    13 images computed in one process, and every decision (best, best epoch, bad epochs, stop)
    and every parameter is identical on both ranks. Only rank 0 wrote checkpoints."""
    result = torchrun("fit", tmp_path)
    ranks, ref = result["decisions"], result["reference"]
    assert ranks[0] == ranks[1]
    assert result["params_equal"] and result["val_shard_sizes"] == [7, 6] and result["train_batches"] == [5, 5]
    last = ranks[0]["history"][-1]
    assert abs(last["val/auroc"] - ref["auroc"]) < 1e-6, (last, ref)
    assert abs(last["val/loss"] - ref["loss"]) < 1e-5, (last, ref)
    assert abs(last["val/prevalence"] - ref["prevalence"]) < 1e-6
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["best.pt", "last.pt"]


def test_resume_after_a_signal_on_one_rank_matches_the_straight_run(tmp_path):
    """Rank 1 alone gets SIGUSR2 after step 3 (epoch 1 of 2, 5 steps per epoch): both ranks stop at
    step 3, rank 0 writes recovery.pt, both resume from it and end bit-identical (max |diff| = 0)
    to an uninterrupted 2-rank run, with the same history (train loss over both ranks: recovery.pt
    holds both ranks' running sums and rank 0 alone re-adds them)."""
    result = torchrun("resume", tmp_path)
    assert [s["step"] for s in result["stopped"]] == [3, 3]
    assert [s["signal"] for s in result["stopped"]] == ["a signal on another rank", "SIGUSR2"]
    assert result["stopped"][0]["checkpoint"].endswith("recovery.pt")
    assert result["files_after_stop"][0] == ["recovery.pt"]
    assert result["max_abs_diff"] == [0.0, 0.0] and result["params_equal_across_ranks"]
    for straight, resumed in zip(result["straight"]["history"], result["resumed"]["history"], strict=True):
        assert straight.keys() == resumed.keys()  # train sums re-added in another order: 1e-12
        assert all(math.isclose(straight[k], resumed[k], rel_tol=1e-12) for k in straight), (straight, resumed)
    assert result["straight"]["global_step"] == result["resumed"]["global_step"] == 10


def test_a_failure_on_one_rank_stops_every_rank(tmp_path):
    """Rank 1 raises while rank 0 waits in a barrier (120 s collective timeout): torchrun stops
    rank 0 at once and exits non-zero, naming rank 1's error."""
    start = time.perf_counter()
    done = torchrun("fail", tmp_path, check=False)
    elapsed = time.perf_counter() - start
    assert done.returncode != 0
    assert "planted failure on rank 1" in done.stderr
    assert elapsed < 90, f"rank 0 was left waiting: {elapsed:.0f} s"
    assert not (tmp_path / "fail.json").exists()


@pytest.mark.parametrize("resume", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["straight", "resumed"])
def test_torchrun_finetune_with_one_run_and_rank0_outputs(tmp_path, resume):
    """`torchrun --nproc_per_node=2 -m cxrssl finetune` (oversampling, SyncBatchNorm) for 2 epochs —
    straight, or (slow, ~70 s) 1 epoch then the same command with resume=true: one run dir, one
    MLflow run (continued), rank 0's checkpoints only; the monitored val AUROC of best.pt equals
    the AUROC of rank 0's predictions on the WHOLE validation split (val_predictions.csv, one
    process) — validation was sharded by rank, every row counted once."""
    from mlflow import MlflowClient

    from tests.conftest import TINY

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    base = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "cxrssl",
            "finetune", *TINY, "imbalance=oversample", "trainer.sync_batchnorm=true", "trainer.device=cpu",
            f"mlflow.tracking_uri={uri}"]
    if resume:  # resume=true continues the newest run under outputs/finetune/
        base.append(f"hydra.run.dir={tmp_path / 'outputs' / 'finetune' / 'run'}")
    calls = [["trainer.max_epochs=1"], ["trainer.max_epochs=2", "resume=true"]] if resume else [["trainer.max_epochs=2"]]
    outputs = []
    for extra in calls:
        done = subprocess.run(base + extra, cwd=tmp_path, env=ENV, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        outputs.append(done.stdout)
    runs_made = list((tmp_path / "outputs" / "finetune").iterdir())
    assert len(runs_made) == 1, runs_made  # rank 1's Hydra made no folder of its own (its ${now:} differs)
    run_dir = runs_made[0]
    assert "BatchNorm layers synchronised over 2 ranks" in outputs[0]
    if resume:
        assert outputs[1].count("resumed from") == 1  # rank 0 alone reports
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_completed"] == 2
    ckpt_dir = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpt_dir.iterdir() if ".pt" in p.name) == ["best.pt", "last.pt"]
    best = torch.load(ckpt_dir / "best.pt", map_location="cpu", weights_only=False)
    assert "threshold" in best["meta"] and (ckpt_dir / "model_card.md").is_file()
    preds = pd.read_csv(run_dir / "val_predictions.csv")
    assert abs(roc_auc_score(preds["label"], preds["probability"]) - summary["best_value"]) < 1e-6
    assert abs(summary["final"]["val/prevalence"] - preds["label"].mean()) < 1e-6  # every val row once
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("cxrssl").experiment_id])
    assert [r.info.run_id for r in runs] == [summary["mlflow_run_id"]]
