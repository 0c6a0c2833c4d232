"""DDP pieces with 2 real gloo processes under torchrun on CPU (cxrssl/engine/distributed.py)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cxrssl.engine.distributed import DistEnv, ShardedSampler, shard_loader

ROOT = Path(__file__).resolve().parents[1]


def torchrun(mode: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{mode}.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(ROOT / "tests" / "ddp_worker.py"), mode, str(out)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(out.read_text())


def test_one_ddp_step_gradient_equals_single_process_gradient(tmp_path):
    """2 ranks × 4 images vs 1 process × the same 8 images. Tolerance 1e-5 × the largest gradient
    entry: the only difference is the float32 summation order of the all-reduce."""
    result = torchrun("grad", tmp_path)
    assert result["ranks_equal"]
    assert result["max_abs_diff"] <= 1e-5 * max(result["ref_max"], 1.0), result


def test_ddp_training_keeps_ranks_identical_and_shards_the_data(tmp_path):
    result = torchrun("train", tmp_path)
    assert result["params_equal"] and result["param_change"] > 0  # trained, and identical on both ranks
    rank0, rank1 = (set(ids) for ids in result["seen"])
    assert rank0 | rank1 == set(range(30)) and not rank0 & rank1  # 30 images: 15 per rank, disjoint
    assert result["n_sum"] == 30
    assert result["run_dir"] == "run-of-rank-0"  # rank 0 decides, every rank receives


def test_sharded_sampler_splits_any_sampler_evenly():
    base = torch.randperm(10, generator=torch.Generator().manual_seed(0)).tolist()
    shards = [list(ShardedSampler(base, 3, r)) for r in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]  # padded from 10 to 12 by repeating the start
    assert set(sum(shards, [])) == set(base)
    with pytest.raises(ValueError, match="rank 3"):
        ShardedSampler(base, 3, 3)


def test_single_process_is_untouched():
    loader = torch.utils.data.DataLoader(list(range(5)), batch_size=2)
    assert shard_loader(loader, DistEnv()) is loader


def test_slurm_launcher_config_composes():
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="pip install 'cxrssl[slurm]'")
    from cxrssl.commands.inprocess import compose_config

    cfg = compose_config("pretrain", ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.gpus_per_node=4"])
    launcher = cfg.hydra.launcher
    assert launcher._target_ == "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    assert (launcher.partition, launcher.gpus_per_node, launcher.max_num_timeout) == ("gpu", 4, 3)
    assert launcher.submitit_folder.endswith(".submitit/%j")  # the plugin's schema underneath ours


def test_torchrun_pretrain_completes_with_one_run_and_rank0_outputs(tmp_path):
    """`torchrun --nproc_per_node=2 -m cxrssl pretrain` on CPU (gloo): one run dir, one MLflow run."""
    from mlflow import MlflowClient

    from tests.conftest import TINY

    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "cxrssl", "pretrain", *TINY, "trainer.max_epochs=2", "trainer.limit_batches=2",
                           "trainer.device=cpu", f"hydra.run.dir={run_dir}",
                           f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["epochs_completed"] == 2 and (run_dir / "checkpoints" / "best.pt").is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("cxrssl").experiment_id])
    assert [r.info.run_id for r in runs] == [summary["mlflow_run_id"]]  # rank 1 logged nothing
