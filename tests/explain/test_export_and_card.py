"""Export parity (ONNX in onnxruntime, TorchScript) and the model card, without training a model."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from tests.evaluation.helpers import synthetic_predictions

from cxrssl.commands.export import ExportedModel, export_model, parity_check
from cxrssl.reporting.model_card import HEADINGS, card_from_validation


@pytest.fixture(scope="module")
def model():
    from cxrssl.models import Classifier, create_encoder

    torch.manual_seed(0)
    net = Classifier(create_encoder("test_resnet")).eval()
    with torch.no_grad():  # a head that is not ~0, so probabilities spread over (0, 1)
        for p in net.head.parameters():
            p.normal_(0, 0.5)
    return net


@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("torchscript", ".ts")])
def test_exported_model_matches_pytorch_and_carries_metadata(model, tmp_path, fmt, suffix):
    if fmt == "onnx":
        pytest.importorskip("onnxruntime", reason="pip install 'cxrssl[export]'")
    meta = {"image_size": 64, "threshold": 0.37, "normalisation": {"mean": 0.5, "std": 0.25, "inside_graph": True}}
    path = export_model(model, meta, tmp_path / f"model{suffix}", fmt)
    exported = ExportedModel(path)
    assert exported.metadata == meta
    images = torch.rand(5, 1, 64, 64, generator=torch.Generator().manual_seed(1))  # batch size ≠ the traced 2
    with torch.no_grad():
        reference = torch.sigmoid(model(images)).numpy()
    np.testing.assert_allclose(exported.probabilities(images), reference, atol=1e-4)
    assert np.ptp(reference) > 1e-3  # the comparison is not between two constants
    assert parity_check(model, path, 64) < 1e-4


def test_unexported_file_is_refused(tmp_path):
    pytest.importorskip("onnx")
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["image"], ["logit"])], "g",
                              [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("logit", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph), tmp_path / "foreign.onnx")
    pytest.importorskip("onnxruntime")
    with pytest.raises(ValueError, match="no cxrssl metadata; export it with `cxrssl export"):
        ExportedModel(tmp_path / "foreign.onnx")


def test_model_card_has_mitchell_headings_metrics_with_cis_and_small_groups(tmp_path):
    val = synthetic_predictions(n_patients=40, seed=3).assign(split="val")
    val.loc[val.index[:6], "view"] = "LL"  # a 6-image subgroup: flagged as too small
    md, js = card_from_validation(val, 0.5, "youden", {"backbone": "test_resnet", "pretext": "recon"},
                                  {"source": "synthetic", "label_fraction": 0.1}, tmp_path, n_boot=50)
    text = md.read_text()
    for heading in HEADINGS:
        assert f"## {heading}" in text, heading
    card = json.loads(js.read_text())
    auroc = card["metrics"]["values"]["auroc"]
    assert auroc["ci_low"] <= auroc["value"] <= auroc["ci_high"] and card["metrics"]["threshold"] == 0.5
    assert "view=LL (n=6)" in card["quantitative_analyses"]["too_small_to_compare"]
    assert "optimistic" in text  # validation metrics, where the threshold was chosen
