"""Every shipped backbone builds offline at a tiny input size, its stages partition the weights
the way partial fine-tuning expects, and local weights load (hub names are refused)."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from cxrssl.models import PretrainedWeightsError, create_encoder
from cxrssl.tasks.cardiomegaly import CardiomegalyTask
from cxrssl.tasks.imbalance import build_imbalance

CONF = Path(__file__).resolve().parents[2] / "conf" / "backbone"
SLOW = {"resnet50", "resnet101"}  # same structure as resnet18, only bigger
CNNS = ("tiny", "resnet18", "resnet50", "resnet101", "efficientnet_b0", "convnext_tiny", "densenet121")
OPTIONS = [pytest.param(o, marks=pytest.mark.slow) if o in SLOW else o for o in CNNS]
#: The first parameter name of the last (partial-fine-tuning) group, per timm model.
LAST_GROUP_STARTS = {"densenet121": "features_transition3.", "resnet18": "layer4.", "resnet50": "layer4.",
                     "resnet101": "layer4.", "convnext_tiny": "stages_3.", "efficientnet_b0": "blocks.5.",
                     "test_resnet": "layer4."}


@pytest.mark.parametrize("option", OPTIONS)
def test_backbone_builds_and_groups_its_stages(option):
    name = OmegaConf.load(CONF / f"{option}.yaml")["name"]
    encoder = create_encoder(name).eval()
    x = torch.rand(2, 1, 64, 64)
    with torch.no_grad():
        features = encoder(x)
    assert features.shape == (2, encoder.out_channels, 64 // encoder.reduction, 64 // encoder.reduction)

    groups = encoder.stage_parameters()
    flat = [n for group in groups for n, _ in group]
    assert flat == [n for n, _ in encoder.net.named_parameters()]  # each weight once, in forward order
    assert len(groups) == len(encoder.stage_names)
    last = [n for n, _ in groups[-1]]
    assert last[0].startswith(LAST_GROUP_STARTS[name]), last[:3]
    if name == "densenet121":  # transition3 + denseblock4 + norm5 form the last block
        assert any(n.startswith("features_denseblock4.") for n in last) and last[-1].startswith("features_norm5.")

    task = CardiomegalyTask(encoder, build_imbalance({"name": "none"}, [0, 1], 0), strategy="partial",
                            trainable_blocks=2)
    trainable = {n for n, p in encoder.net.named_parameters() if p.requires_grad}
    assert trainable == {n for group in groups[-2:] for n, _ in group}
    assert all(p.requires_grad for p in task.head.parameters())


def test_local_weights_file_loads_with_a_one_channel_stem(tmp_path):
    import timm

    source = timm.create_model("test_resnet", pretrained=False)  # a 3-channel, ImageNet-style model
    torch.save(source.state_dict(), tmp_path / "w.pth")
    encoder = create_encoder("test_resnet", pretrained=tmp_path / "w.pth")
    own = dict(encoder.net.named_parameters())
    torch.testing.assert_close(own["layer4.0.conv1.weight"], source.state_dict()["layer4.0.conv1.weight"])
    stem = source.state_dict()["conv1.0.weight"]
    assert own["conv1.0.weight"].shape[1] == 1 and stem.shape[1] == 3
    torch.testing.assert_close(own["conv1.0.weight"], stem.sum(dim=1, keepdim=True))  # timm's in_chans=1 rule


@pytest.mark.parametrize("ref", ["imagenet", "timm/resnet18.a1_in1k", "/nowhere/weights.pth"])
def test_hub_names_and_missing_files_are_refused(ref):
    with pytest.raises(PretrainedWeightsError, match="never downloads|not a local file|not found"):
        create_encoder("test_resnet", pretrained=ref)
