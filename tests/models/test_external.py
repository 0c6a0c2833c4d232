"""Published encoder layouts load through `pretrained=` and compute what the original computes.

Each test builds a randomly initialised model in the original layout (torchxrayvision constructs
its DenseNet without weights; the others are the layouts written out with timm/torchvision),
saves its state dict, loads it through `cxrssl.models.loading.load_encoder` and compares the
encoder's deepest feature map with the original model's on the same gray image.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cxrssl.models.loading import WeightsMismatchError, load_encoder



@pytest.fixture(autouse=True)
def _no_grad():
    """Inference only, scoped to each test (a module-level set_grad_enabled(False) would switch
    autograd off for every test collected after this file)."""
    with torch.no_grad():
        yield


def image(size: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(1, 1, size, size, generator=torch.Generator().manual_seed(seed))


def save(tmp_path, state, name="weights.pth"):
    path = tmp_path / name
    torch.save(state, path)
    return path


def test_torchxrayvision_densenet(tmp_path, capsys):
    xrv = pytest.importorskip("torchxrayvision")
    torch.manual_seed(0)
    original = xrv.models.DenseNet(weights=None).eval()  # random init, never downloads
    path = save(tmp_path, original.state_dict())
    encoder, info = load_encoder({"name": "densenet121", "timm_kwargs": {}}, path)
    assert info["format"] == "xrv_densenet" and any("classification head" in d for d in info["dropped"])
    assert "xrv_densenet" in capsys.readouterr().out  # the loader says what it adapted
    x = image(64)
    expected = F.relu(original.features((x - 0.5) * 2048))  # xrv input range [-1024, 1024]
    got = encoder.eval()(x)
    assert torch.allclose(got, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()))


def _xrv_resnet50():
    import torchvision

    class XrvResNet(torch.nn.Module):  # torchxrayvision.models.ResNet's layout: torchvision under `model.`
        def __init__(self):
            super().__init__()
            self.model = torchvision.models.resnet50(num_classes=18, weights=None)
            self.model.conv1 = torch.nn.Conv2d(1, 64, kernel_size=7, stride=2, padding=3, bias=False)

    return XrvResNet().eval()


def test_torchxrayvision_resnet_layout(tmp_path):
    torch.manual_seed(0)
    original = _xrv_resnet50()
    path = save(tmp_path, original.state_dict())
    encoder, info = load_encoder({"name": "resnet50", "timm_kwargs": {}}, path)
    assert info["format"] == "xrv_resnet"
    m, x = original.model, image(64, 1)
    h = m.maxpool(m.relu(m.bn1(m.conv1((x - 0.5) * 2048))))
    expected = m.layer4(m.layer3(m.layer2(m.layer1(h))))
    got = encoder.eval()(x)
    assert torch.allclose(got, expected, rtol=1e-3, atol=1e-3 * float(expected.abs().max()))


def _vit_reference(model, x, mean, std):
    x3 = (x.repeat(1, 3, 1, 1) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    return model.forward_intermediates(x3, indices=1, norm=False, output_fmt="NCHW", intermediates_only=True)[-1]


def test_dinov2_layout_with_mask_token_and_final_norm(tmp_path):
    import timm

    torch.manual_seed(0)
    original = timm.create_model("vit_small_patch14_dinov2", img_size=56, num_classes=0).eval()
    state = {**original.state_dict(), "mask_token": torch.zeros(1, 384)}
    path = save(tmp_path, {"teacher": state})  # DINO checkpoints nest the weights
    cfg = {"name": "vit_small_patch14_dinov2", "timm_kwargs": {"img_size": 56}}
    encoder, info = load_encoder(cfg, path)
    assert info["format"] == "dinov2"
    assert {d.split(" ")[0] for d in info["dropped"]} == {"mask_token", "norm.weight", "norm.bias"}
    x = image(56, 2)
    expected = _vit_reference(original, x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert torch.allclose(encoder.eval()(x), expected, rtol=1e-3, atol=1e-4)
    # a different resolution: the position embeddings are resampled, not rejected
    bigger = timm.create_model("vit_small_patch14_dinov2", img_size=112, num_classes=0)
    encoder, info = load_encoder(cfg, save(tmp_path, bigger.state_dict(), "big.pth"))
    assert any("resampled" in n for n in info["notes"])
    assert encoder(x).shape == (1, 384, 4, 4)


def test_rad_dino_huggingface_layout(tmp_path):
    """HF Dinov2 keys (RAD-DINO's release) → timm: q, k, v fused in that order, layer scales, norms."""
    import timm

    torch.manual_seed(0)
    original = timm.create_model("vit_small_patch14_dinov2", img_size=56, num_classes=0).eval()
    for block in original.blocks:  # peaked attention, so a q/k mix-up changes the output
        block.attn.qkv.weight.mul_(30)
    hf = {"embeddings.cls_token": original.cls_token, "embeddings.mask_token": torch.zeros(1, 384),
          "embeddings.position_embeddings": original.pos_embed,
          "embeddings.patch_embeddings.projection.weight": original.patch_embed.proj.weight,
          "embeddings.patch_embeddings.projection.bias": original.patch_embed.proj.bias,
          "layernorm.weight": original.norm.weight, "layernorm.bias": original.norm.bias}
    for i, block in enumerate(original.blocks):
        p = f"encoder.layer.{i}."
        q, k, v = block.attn.qkv.weight.chunk(3)
        qb, kb, vb = block.attn.qkv.bias.chunk(3)
        hf.update({p + "attention.attention.query.weight": q, p + "attention.attention.key.weight": k,
                   p + "attention.attention.value.weight": v, p + "attention.attention.query.bias": qb,
                   p + "attention.attention.key.bias": kb, p + "attention.attention.value.bias": vb,
                   p + "attention.output.dense.weight": block.attn.proj.weight,
                   p + "attention.output.dense.bias": block.attn.proj.bias,
                   p + "norm1.weight": block.norm1.weight, p + "norm1.bias": block.norm1.bias,
                   p + "norm2.weight": block.norm2.weight, p + "norm2.bias": block.norm2.bias,
                   p + "mlp.fc1.weight": block.mlp.fc1.weight, p + "mlp.fc1.bias": block.mlp.fc1.bias,
                   p + "mlp.fc2.weight": block.mlp.fc2.weight, p + "mlp.fc2.bias": block.mlp.fc2.bias,
                   p + "layer_scale1.lambda1": block.ls1.gamma, p + "layer_scale2.lambda1": block.ls2.gamma})
    path = save(tmp_path, {k: v.detach().clone() for k, v in hf.items()}, "rad_dino.pth")
    encoder, info = load_encoder({"name": "vit_small_patch14_dinov2", "timm_kwargs": {"img_size": 56}}, path)
    assert info["format"] == "rad_dino"
    x = image(56, 3)
    expected = _vit_reference(original, x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert torch.allclose(encoder.eval()(x), expected, rtol=1e-3, atol=1e-4)


def test_mae_pretraining_checkpoint(tmp_path):
    import timm

    torch.manual_seed(0)
    original = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=0).eval()
    state = {**original.state_dict(), "mask_token": torch.zeros(1, 1, 192),
             "decoder_embed.weight": torch.zeros(128, 192), "decoder_pred.weight": torch.zeros(256 * 3, 128)}
    path = save(tmp_path, {"model": state, "epoch": 799})  # the MAE repo's checkpoint dict
    encoder, info = load_encoder({"name": "vit_tiny_patch16_224", "timm_kwargs": {"img_size": 64}}, path)
    assert info["format"] == "mae"
    x = image(64, 4)
    expected = _vit_reference(original, x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert torch.allclose(encoder.eval()(x), expected, rtol=1e-3, atol=1e-4)


def test_mismatches_name_the_keys_and_the_backbone(tmp_path):
    xrv = pytest.importorskip("torchxrayvision")
    state = xrv.models.DenseNet(weights=None).state_dict()
    path = save(tmp_path, state)
    with pytest.raises(WeightsMismatchError, match="xrv_densenet.*densenet121"):
        load_encoder({"name": "resnet18", "timm_kwargs": {}}, path)
    broken = dict(state)
    broken.pop("features.denseblock4.denselayer16.conv2.weight")
    broken["features.extra_layer.weight"] = torch.zeros(3)
    with pytest.raises(WeightsMismatchError) as err:
        load_encoder({"name": "densenet121", "timm_kwargs": {}}, save(tmp_path, broken, "broken.pth"))
    assert "features_denseblock4.denselayer16.conv2.weight" in str(err.value)  # missing, named
    assert "features.extra_layer.weight" in str(err.value)                      # unexpected, named


def test_torchxrayvision_resnet_autoencoder_is_refused_with_the_reason(tmp_path):
    """xrv's ResNetAE101 (random init, no download) is recognised and refused by name, for every
    backbone, with the architectural reason; the reason is checked against the model itself."""
    xrv = pytest.importorskip("torchxrayvision")
    import timm

    torch.manual_seed(0)
    ae = xrv.autoencoders.ResNetAE(weights=None).eval()
    path = save(tmp_path, ae.state_dict(), "resnet_ae.pt")
    for backbone in ("resnet101", "resnet50", "tiny"):
        with pytest.raises(WeightsMismatchError, match="torchxrayvision ResNet autoencoder") as err:
            load_encoder({"name": backbone, "timm_kwargs": {}}, path)
        assert "no backbone in conf/backbone" in str(err.value) and "ReLU" in str(err.value)
    # layer4: width 128 (512 channels), stride 6, 2 blocks — not resnet101's 2048 channels at stride 2
    assert ae.layer4[0].conv3.out_channels == 512 and ae.layer4[0].conv2.stride == (6, 6) and len(ae.layer4) == 2
    # layers 1-3 have resnet101's shapes, yet its bottleneck computes something else with the same weights
    ref = timm.create_model("resnet101", pretrained=False, num_classes=0, in_chans=1).eval()
    ref_block, ae_block = ref.layer1[0], ae.layer1[0]
    ref_block.load_state_dict(ae_block.state_dict())
    for bn in (ref_block.bn3, ae_block.bn3):  # make bn3's output negative somewhere, where ReLU-before-add bites
        bn.bias.data.fill_(-1.0)
    x = torch.rand(1, 64, 16, 16)
    assert not torch.allclose(ref_block(x), ae_block(x), atol=1e-3)
