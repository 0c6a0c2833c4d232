"""Weights never run code: every path that reads a weights file (backbone.pretrained, pretrained=,
checkpoint=, resume=, timm_kwargs.checkpoint_path, a checkpoint's embedded config) is fed a pickle
whose `__reduce__` creates a marker file; the marker must never appear. Each test also runs with
timm's loaders patched to `weights_only=False` (timm 1.0.9-1.0.25 behaviour), and a control shows
that patch really does run the payload when timm's loader is used."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from cxrssl.engine.checkpoint import CheckpointError
from cxrssl.models.backbones import PretrainedWeightsError, create_encoder
from cxrssl.models.loading import load_classifier, load_encoder
from cxrssl.models.safe_weights import UnsafeWeightsError, load_weights_file
from tests.security.payload import Payload, checkpoint_with_payload, tiny_state, weights_with_payload


def _old_timm(monkeypatch):
    """timm <= 1.0.25: its file loaders unpickle with weights_only=False."""
    import timm.models._helpers as helpers

    def unsafe(path, map_location="cpu", weights_only=True, mmap=False):
        return torch.load(path, map_location=map_location, weights_only=False)

    monkeypatch.setattr(helpers, "_torch_load", unsafe)


@pytest.fixture(params=["timm-installed", "timm-old-loader"])
def timm_mode(request, monkeypatch):
    if request.param == "timm-old-loader":
        _old_timm(monkeypatch)
    return request.param


@pytest.fixture
def evil(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    return marker, weights_with_payload(tmp_path / "evil.pth", marker)


def test_control_the_simulated_old_timm_loader_does_run_the_payload(monkeypatch, evil):
    import timm

    marker, path = evil
    _old_timm(monkeypatch)
    with pytest.raises(Exception):
        timm.create_model("test_resnet", checkpoint_path=str(path))
    assert marker.exists(), "the simulation must be unsafe, or the tests below prove nothing"


def test_backbone_pretrained_payload_never_runs(timm_mode, evil):
    marker, path = evil
    with pytest.raises(PretrainedWeightsError, match="weights_only=True"):
        create_encoder("test_resnet", pretrained=path)
    assert not marker.exists()


def test_finetune_pretrained_payload_never_runs(timm_mode, evil):
    marker, path = evil
    with pytest.raises(CheckpointError, match="holds objects other than tensors"):
        load_encoder({"name": "test_resnet", "pretrained": None, "timm_kwargs": {}}, str(path))
    assert not marker.exists()


def test_timm_kwargs_checkpoint_path_is_refused(timm_mode, evil):
    marker, path = evil
    with pytest.raises(PretrainedWeightsError, match="checkpoint_path.. not allowed"):
        create_encoder("test_resnet", checkpoint_path=str(path))
    with pytest.raises(PretrainedWeightsError, match="pretrained_cfg_overlay.. not allowed"):
        create_encoder("test_resnet", pretrained_cfg_overlay={"file": str(path)})
    assert not marker.exists()


def test_checkpoint_payload_never_runs(timm_mode, tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    path = checkpoint_with_payload(tmp_path / "best.pt", marker)
    with pytest.raises(CheckpointError):
        load_classifier(str(path))
    assert not marker.exists()


def test_embedded_timm_kwargs_checkpoint_path_never_reaches_timm(timm_mode, evil, tmp_path):
    marker, payload = evil
    config = f"backbone:\n  name: test_resnet\n  timm_kwargs:\n    checkpoint_path: {payload}\n"
    path = tmp_path / "ft.pt"
    torch.save({"version": 1, "model": {"encoder.x": torch.zeros(1)}, "config": config,
                "meta": {"command": "finetune", "backbone": "test_resnet"}}, path)
    with pytest.raises(PretrainedWeightsError, match="checkpoint_path.. not allowed"):
        load_classifier(str(path))
    assert not marker.exists()


def test_resume_payload_never_runs(timm_mode, tmp_path):
    from cxrssl.commands.training import resume_point

    marker = tmp_path / "PAYLOAD_RAN"
    path = checkpoint_with_payload(tmp_path / "last.pt", marker)
    cfg = OmegaConf.create({"resume": str(path), "command": "pretrain", "backbone": {"name": "test_resnet"},
                            "pretext": {"name": "age"}})
    with pytest.raises(CheckpointError):
        resume_point(cfg, tmp_path / "run")
    assert not marker.exists()


def test_clean_weights_still_load_and_adapt_the_stem(tmp_path):
    state = tiny_state()
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "w.pth")  # a training-script wrapper
    encoder = create_encoder("test_resnet", pretrained=tmp_path / "w.pth")
    assert torch.allclose(encoder.net.conv1[0].weight[:, 0], state["conv1.0.weight"].sum(1))
    from safetensors.torch import save_file

    save_file(state, str(tmp_path / "w.safetensors"))
    assert set(load_weights_file(tmp_path / "w.safetensors")) == set(state)
    encoder = create_encoder("test_resnet", pretrained=tmp_path / "w.safetensors")
    assert torch.allclose(encoder.net.conv1[0].weight[:, 0], state["conv1.0.weight"].sum(1))


def test_load_weights_file_refuses_payload_and_hub_names(tmp_path):
    marker = tmp_path / "PAYLOAD_RAN"
    torch.save({"w": torch.zeros(1), "x": Payload(marker)}, tmp_path / "p.pt")
    with pytest.raises(UnsafeWeightsError):
        load_weights_file(tmp_path / "p.pt")
    assert not marker.exists()
    with pytest.raises(PretrainedWeightsError, match="hub"):
        create_encoder("hf-hub:timm/resnet18.a1_in1k")


def test_external_format_loaders_never_run_the_payload(timm_mode, evil):
    from cxrssl.models.external import external_format_of, load_external_encoder

    marker, path = evil
    assert external_format_of(path) is None  # not an external layout: the regular loader reports it
    with pytest.raises(UnsafeWeightsError):
        load_external_encoder({"name": "test_resnet", "pretrained": None, "timm_kwargs": {}}, path)
    assert not marker.exists()
