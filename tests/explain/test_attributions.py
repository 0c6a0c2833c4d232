"""compute_attributions: shapes, signs, batching and layer resolution on an untrained model."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from cxrssl.explain import METHODS, compute_attributions, is_signed, occlusion_geometry, resolve_layer


@pytest.fixture
def images():
    return torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_float_maps_at_input_size(untrained, images, method):
    maps = compute_attributions(untrained, images, method, batch_size=2, n_steps=4, n_samples=4, progress=False,
                                occlusion_window=8, occlusion_stride=4, occlusion_reference_size=None)
    assert maps.shape == (3, 32, 32) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and np.abs(maps).max() > 0
    if not is_signed(method):
        assert maps.min() >= 0


def test_batching_does_not_change_the_maps(untrained, images):
    one = compute_attributions(untrained, images, "gradcam", batch_size=1, progress=False)
    many = compute_attributions(untrained, images, "gradcam", batch_size=3, progress=False)
    np.testing.assert_allclose(one, many, rtol=1e-4, atol=1e-6)
    window = dict(occlusion_window=8, occlusion_stride=4, occlusion_reference_size=None)
    occl_one = compute_attributions(untrained, images, "occlusion", batch_size=1, internal_batch_size=1,
                                    progress=False, **window)
    occl_many = compute_attributions(untrained, images, "occlusion", batch_size=3, internal_batch_size=64,
                                     progress=False, **window)
    np.testing.assert_allclose(occl_one, occl_many, rtol=1e-4, atol=1e-6)


def test_gradcam_sign_is_a_choice(untrained, images):
    signed = compute_attributions(untrained, images, "gradcam", gradcam_relu=False, progress=False)
    relu = compute_attributions(untrained, images, "gradcam", progress=False)
    assert relu.min() >= 0 and is_signed("gradcam", gradcam_relu=False) and not is_signed("gradcam")
    np.testing.assert_allclose(relu, np.maximum(signed, 0), atol=1e-6)


def test_layer_override_and_bad_layer_name(untrained, images):
    assert resolve_layer(untrained, None) is untrained.encoder.gradcam_layer
    assert resolve_layer(untrained, "encoder.net.layer3") is untrained.encoder.net.layer3
    deep = compute_attributions(untrained, images, "gradcam", progress=False)
    mid = compute_attributions(untrained, images, "gradcam", layer="encoder.net.layer3", progress=False)
    assert not np.allclose(deep, mid)
    with pytest.raises(ValueError, match=r"encoder\.net\.layer9.*Valid names include: .*encoder\.net\.layer3"):
        compute_attributions(untrained, images, "gradcam", layer="encoder.net.layer9", progress=False)


def test_bad_inputs_are_named(untrained, images):
    with pytest.raises(ValueError, match="unknown attribution method 'lime'"):
        compute_attributions(untrained, images, "lime", progress=False)
    with pytest.raises(ValueError, match=r"\(B, 1, H, W\)"):
        compute_attributions(untrained, images[:, 0], "saliency", progress=False)
    assert compute_attributions(untrained, images[:0], "saliency", progress=False).shape == (0, 32, 32)


def test_custom_callable_method(untrained, images):
    maps = compute_attributions(untrained, images, lambda model, x: x * 2, progress=False)
    np.testing.assert_allclose(maps, images[:, 0].numpy() * 2)


def test_occlusion_window_scales_with_resolution():
    assert occlusion_geometry(224) == (15, 8)
    assert occlusion_geometry(448) == (30, 16)
    assert occlusion_geometry(64) == (4, 2)
    assert occlusion_geometry(64, reference_size=None) == (15, 8)


def test_baselines_switch_changes_ig_and_occlusion(untrained, images):
    geometry = dict(occlusion_window=8, occlusion_stride=8, occlusion_reference_size=None, progress=False)
    for method in ("integrated_gradients", "occlusion"):
        zero = compute_attributions(untrained, images, method, baselines="zero", n_steps=4, **geometry)
        blur = compute_attributions(untrained, images, method, baselines="blur", n_steps=4, **geometry)
        assert not np.allclose(zero, blur)
    with pytest.raises(ValueError, match="baselines='mean'"):
        compute_attributions(untrained, images, "occlusion", baselines="mean", **geometry)
