"""Seeding and RNG state capture (plain tensors/lists, so checkpoints load with weights_only)."""
from __future__ import annotations

import os
import random

import numpy as np
import torch


def seed_everything(seed: int, deterministic: bool = False, cudnn_benchmark: bool = True) -> None:
    """Seed Python, NumPy and torch. `cudnn_benchmark` (``trainer.cudnn_benchmark``, default on)
    lets cuDNN time its convolution algorithms for each new input shape and keep the fastest:
    torch leaves it off, and the CLI never turned it on, so a `cxrssl pretrain` on a GPU ran
    untuned convolutions. Deterministic runs keep it off (autotuning may pick
    non-deterministic algorithms)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    else:
        torch.backends.cudnn.benchmark = bool(cudnn_benchmark)


def seed_from_config(trainer_cfg) -> int:
    """`seed_everything` from ``trainer.seed``, ``trainer.deterministic``, ``trainer.cudnn_benchmark``
    (what every training command does first); returns the seed."""
    seed = int(trainer_cfg.get("seed", 0))
    seed_everything(seed, bool(trainer_cfg.get("deterministic", False)),
                    bool(trainer_cfg.get("cudnn_benchmark", True)))
    return seed


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np_state = state["numpy"]
    np.random.set_state(("MT19937", np_state["keys"].numpy().astype(np.uint32), np_state["pos"],
                         np_state["has_gauss"], np_state["gauss"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
