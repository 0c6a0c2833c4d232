"""trainer.profile_steps, the side-stream host→device copy and cuDNN autotuning in the CLI.

The profile summary is checked on a hand-made trace whose answer is known (busy share, which
idle gap the DataLoader and which a host sync caused), then end to end: a fit with
profile_steps=3 records exactly 3 training batches and a real `cxrssl pretrain` writes the
trace and puts its summary into summary.json.
"""
from __future__ import annotations

import json

import pytest
import torch

from cxrssl.commands.inprocess import run_command
from cxrssl.engine.batch import DeviceCopier, to_device
from cxrssl.engine.profiling import summarise_trace
from cxrssl.engine.seed import seed_from_config
from tests.conftest import TINY
from tests.engine.test_loop import make_trainer


def _x(name, cat, start_ms, end_ms):
    return {"ph": "X", "name": name, "cat": cat, "ts": start_ms * 1e3, "dur": (end_ms - start_ms) * 1e3}


def test_summary_measures_busy_share_and_names_each_gap():
    events = [_x("ProfilerStep#1", "user_annotation", 0, 10), _x("ProfilerStep#2", "user_annotation", 10, 20),
              _x("kernel_a", "kernel", 0, 3), _x("kernel_b", "kernel", 5, 12), _x("copy", "gpu_memcpy", 14, 20),
              # the op that encloses the first gap must not hide the DataLoader wait inside it
              _x("aten::conv2d", "cpu_op", 2, 6),
              _x("enumerate(DataLoader)#_MultiProcessingDataLoaderIter.__next__", "user_annotation", 2.9, 5.1),
              _x("cudaStreamSynchronize", "cuda_runtime", 11, 14),
              _x("ProfilerStep#1", "gpu_user_annotation", 0, 10),  # the device-side copy is not a step
              # a 0.01 ms .item() inside a 1 ms gap does not explain it: the op around it does
              _x("kernel_c", "kernel", 20, 21), _x("ProfilerStep#3", "user_annotation", 20, 23),
              _x("optimizer_step", "cpu_op", 21, 22.5), _x("aten::item", "cpu_op", 21.5, 21.51), _x("kernel_d", "kernel", 22, 23)]
    summary = summarise_trace(events)
    assert summary["steps"] == 3 and summary["window_ms"] == pytest.approx(23)
    assert summary["gpu_busy_frac"] == pytest.approx(18 / 23)
    assert summary["host_dataloader_frac"] == pytest.approx(2.2 / 23)
    gaps = {g["cause"]: g for g in summary["gaps"]}
    assert set(gaps) == {"waiting for the DataLoader", "host sync (cudaStreamSynchronize)", "optimizer_step"}
    assert gaps["optimizer_step"]["total_ms"] == pytest.approx(1)
    assert gaps["waiting for the DataLoader"]["total_ms"] == pytest.approx(2)
    assert gaps["host sync (cudaStreamSynchronize)"]["total_ms"] == pytest.approx(2)


def test_fit_profiles_exactly_the_asked_batches(tmp_path):
    trainer, loaders = make_trainer(tmp_path, max_epochs=2, profile_steps=3, profile_skip_steps=2)
    result = trainer.fit(loaders["train"], loaders["val"])  # 4 batches per epoch, 8 in all
    trace = json.loads((tmp_path / "profile" / "trace.json").read_text())["traceEvents"]
    steps = sorted(e["name"] for e in trace if str(e.get("name", "")).startswith("ProfilerStep#"))
    assert steps == ["ProfilerStep#2", "ProfilerStep#3", "ProfilerStep#4"]
    assert any("DataLoader" in str(e.get("name")) for e in trace)
    summary = json.loads((tmp_path / "profile" / "summary.json").read_text())
    assert summary == result["profile"] and summary["steps"] == 3
    assert summary["gpu_busy_frac"] is None and 0 < summary["host_dataloader_frac"] < 1  # CPU: no device timeline


def test_no_profile_by_default(tmp_path):
    trainer, loaders = make_trainer(tmp_path, max_epochs=1)
    result = trainer.fit(loaders["train"], loaders["val"])
    assert "profile" not in result and not (tmp_path / "profile").exists()


def test_pretrain_writes_the_profile_and_turns_cudnn_autotuning_on(tmp_path):
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        run_dir, summary = run_command("pretrain", [*TINY, "mlflow.enabled=false", "trainer.max_epochs=1",
                                                    "trainer.device=cpu", "trainer.profile_steps=2",
                                                    "trainer.profile_skip_steps=1"], run_dir=tmp_path / "run")
        assert torch.backends.cudnn.benchmark is True  # the command turned it on (trainer.cudnn_benchmark)
    finally:
        torch.backends.cudnn.benchmark = before
    assert (tmp_path / "run" / "profile" / "trace.json").is_file()
    assert summary["profile"]["steps"] == 2


@pytest.mark.parametrize("trainer_cfg, expected", [({"seed": 0}, True), ({"seed": 0, "deterministic": True}, False),
                                                   ({"seed": 0, "cudnn_benchmark": False}, False)])
def test_cudnn_autotuning_follows_the_config(trainer_cfg, expected):
    before = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
              torch.are_deterministic_algorithms_enabled())
    try:
        torch.backends.cudnn.benchmark = not expected
        seed_from_config(trainer_cfg)
        assert torch.backends.cudnn.benchmark is expected
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = before[:2]
        torch.use_deterministic_algorithms(before[2])


def _batch():
    g = torch.Generator().manual_seed(0)
    return {"image": torch.randint(0, 255, (8, 1, 16, 16), dtype=torch.uint8, generator=g),
            "age": torch.rand(8, generator=g), "view": ["PA"] * 8, "pair": (torch.rand(8, 1, 16, 16, generator=g),)}


def test_copier_on_the_cpu_is_to_device():
    batch = _batch()
    moved = DeviceCopier(torch.device("cpu"), channels_last=True)(batch)
    expected = to_device(batch, torch.device("cpu"), channels_last=True)
    assert moved["view"] == expected["view"]
    torch.testing.assert_close(moved["image"], expected["image"])
    assert moved["pair"][0].is_contiguous(memory_format=torch.channels_last)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_copier_side_stream_delivers_the_batch_without_a_host_sync():
    batch = {k: (v.pin_memory() if isinstance(v, torch.Tensor) else v) for k, v in _batch().items()}
    copier = DeviceCopier(torch.device("cuda"), channels_last=True)
    busy = torch.randn(4096, 4096, device="cuda")
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            busy = busy @ busy / 64  # keep the compute stream busy while the copies are queued
            moved = copier(batch)
            total = moved["image"].float().sum() + moved["pair"][0].sum()  # used at once on the compute stream
    finally:
        torch.cuda.set_sync_debug_mode(0)
    assert moved["image"].device.type == "cuda" and moved["pair"][0].is_contiguous(memory_format=torch.channels_last)
    assert total.item() == pytest.approx(batch["image"].float().sum().item() + batch["pair"][0].sum().item(), rel=1e-5)
