"""A checkpoint's embedded config is untrusted input (see cxrssl/models/embedded_config.py)."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from cxrssl.models.backbones import PretrainedWeightsError
from cxrssl.models.embedded_config import (EmbeddedConfigError, MAX_CONFIG_BYTES, read_embedded_config,
                                           safe_meta)
from cxrssl.models.loading import load_classifier

ALIAS_BOMB = """a: &a ["x","x","x","x","x","x","x","x","x"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


def test_alias_bomb_is_refused_fast():
    start = time.perf_counter()
    with pytest.raises(EmbeddedConfigError, match="aliases"):
        read_embedded_config(ALIAS_BOMB)
    assert time.perf_counter() - start < 1.0


def test_oversized_config_is_refused():
    with pytest.raises(EmbeddedConfigError, match="limit"):
        read_embedded_config("a: " + "x" * (MAX_CONFIG_BYTES + 1))


def test_interpolations_are_refused_never_resolved(monkeypatch):
    monkeypatch.setenv("SECRET", "hunter2")
    with pytest.raises(EmbeddedConfigError, match="interpolation") as info:
        read_embedded_config("data:\n  root: ${oc.env:SECRET}\n")
    assert "hunter2" not in str(info.value)
    with pytest.raises(EmbeddedConfigError, match="interpolation"):
        read_embedded_config("data:\n  columns: {'${oc.env:SECRET}': path}\n")


def test_only_allow_listed_keys_within_bounds_survive():
    text = ("backbone: {name: test_resnet, pretrained: /etc/evil.pth, timm_kwargs: {drop_rate: 0.1}}\n"
            "data: {source: csv, root: /data/x, image_size: 224, num_workers: 2, cache: {dir: /etc, workers: 2},"
            " whatever: 1, augment: {hflip: true, evil: 1}}\nmlflow: {tracking_uri: http://evil}\n")
    out = read_embedded_config(text)
    assert out == {"backbone": {"name": "test_resnet", "timm_kwargs": {"drop_rate": 0.1}},
                   "data": {"source": "csv", "root": "/data/x", "image_size": 224, "num_workers": 2,
                            "cache": {"workers": 2}, "augment": {"hflip": True}}}
    for bad, key in (("image_size: 30000", "image_size"), ("num_workers: 10000", "num_workers"),
                     ("source: '/tmp/x'", "source"), ("root: [1, 2]", "root")):
        with pytest.raises(EmbeddedConfigError, match=key):
            read_embedded_config(f"data: {{{bad}}}")


def test_hub_backbone_names_and_big_image_sizes_in_meta_are_refused():
    with pytest.raises(PretrainedWeightsError, match="hub"):
        safe_meta({"backbone": "hf-hub:evil/model"})
    with pytest.raises(PretrainedWeightsError):
        safe_meta({"backbone": "timm/resnet18"})
    with pytest.raises(EmbeddedConfigError, match="image_size"):
        safe_meta({"backbone": "test_resnet", "image_size": 30000})


def test_load_classifier_returns_only_the_checked_config(tmp_path, monkeypatch):
    from cxrssl.models import Classifier
    from cxrssl.models.backbones import create_encoder

    model = Classifier(create_encoder("test_resnet"))
    config = "backbone: {name: test_resnet, timm_kwargs: {}}\ndata: {source: synthetic, image_size: 32, junk: 1}\n"
    path = tmp_path / "ft.pt"
    torch.save({"version": 1, "model": model.state_dict(), "config": config,
                "meta": {"command": "finetune", "backbone": "test_resnet", "image_size": 32}}, path)
    _, info = load_classifier(str(path))
    assert info["config"] == {"backbone": {"name": "test_resnet", "timm_kwargs": {}},
                              "data": {"source": "synthetic", "image_size": 32}}
    torch.save({"version": 1, "model": model.state_dict(), "config": ALIAS_BOMB,
                "meta": {"command": "finetune", "backbone": "test_resnet"}}, path)
    with pytest.raises(EmbeddedConfigError):
        load_classifier(str(path))


def test_network_switches_are_set_before_the_libraries_import():
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "MLFLOW_DISABLE_TELEMETRY")}
    code = ("import cxrssl, os, huggingface_hub.constants as c; from mlflow.environment_variables import "
            "MLFLOW_DISABLE_TELEMETRY as t; print(os.environ['HF_HUB_OFFLINE'], c.HF_HUB_OFFLINE, t.get())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["1", "True", "True"], out.stderr[-2000:]
