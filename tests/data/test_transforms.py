import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from cxrssl.data.transforms import build_augment, build_preprocess, build_transforms


def cfg(**over):
    base = {"image_size": 32, "resize_mode": "letterbox", "equalize": "none",
            "augment": {"enabled": True, "rotate_limit": 0, "scale_limit": 0,
                        "translate_limit": 0, "brightness_contrast": 0, "p": 1.0, "hflip": False}}
    base.update(over)
    return OmegaConf.create(base)


def tall_image() -> np.ndarray:
    image = np.full((64, 32), 200, np.uint8)  # portrait: letterbox pads left/right
    image[:, :8] = 50
    return image


def test_letterbox_keeps_aspect_and_pads_with_black():
    out = build_preprocess(cfg())(image=tall_image())["image"]
    assert out.shape == (32, 32) and out.dtype == np.uint8
    assert (out[:, :8] == 0).all() and (out[:, -8:] == 0).all()  # 16 px wide content, centred
    assert (out[:, 12:24] == 200).all() and (out[:, 8:10] == 50).all()


def test_crop_and_stretch_fill_the_square():
    crop = build_preprocess(cfg(resize_mode="crop"))(image=tall_image())["image"]
    stretch = build_preprocess(cfg(resize_mode="stretch"))(image=tall_image())["image"]
    assert crop.shape == stretch.shape == (32, 32)
    assert (crop[:, :4] == 50).all() and (crop > 0).all()  # crop keeps the left band at full width
    assert (stretch[:, :3] == 50).all() and (stretch[:, -3:] == 200).all()


def test_equalize_modes_change_the_histogram():
    rng = np.random.default_rng(0)
    dull = (100 + rng.random((64, 64)) * 30).astype(np.uint8)
    plain = build_preprocess(cfg(resize_mode="stretch"))(image=dull)["image"]
    hist = build_preprocess(cfg(resize_mode="stretch", equalize="hist"))(image=dull)["image"]
    clahe = build_preprocess(cfg(resize_mode="stretch", equalize="clahe"))(image=dull)["image"]
    assert np.ptp(plain) < 40 and np.ptp(hist) > 200
    assert np.ptp(clahe) > np.ptp(plain)
    with pytest.raises(ValueError, match="equalize"):
        build_preprocess(cfg(equalize="gamma"))
    with pytest.raises(ValueError, match="resize_mode"):
        build_preprocess(cfg(resize_mode="pad"))


def test_output_is_float_tensor_in_unit_range():
    out = build_transforms(cfg(), train=False)(image=tall_image())["image"]
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert tuple(out.shape) == (1, 32, 32) and 0.0 <= out.min() and out.max() <= 1.0


def test_no_horizontal_flip_unless_asked():
    image = np.zeros((32, 32), np.uint8)
    image[:, :5] = 255
    plain = [build_augment(cfg(), train=True, seed=s)(image=image)["image"] for s in range(20)]
    assert all(torch.equal(p, plain[0]) for p in plain) and plain[0][0, :, 0].min() == 1.0
    flipping = build_augment(cfg(augment={"hflip": True, "rotate_limit": 0, "scale_limit": 0,
                                          "brightness_contrast": 0}), train=True)
    flips = sum(bool(flipping(image=image)["image"][0, 0, -1] == 1.0) for _ in range(40))
    assert 5 < flips < 35


def test_train_augments_eval_does_not():
    image = np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))
    random_cfg = cfg(augment={"rotate_limit": 15, "scale_limit": 0.1, "p": 1.0})
    train = build_augment(random_cfg, train=True, seed=1)
    outputs = [train(image=image)["image"] for _ in range(5)]
    assert not all(torch.equal(o, outputs[0]) for o in outputs)
    evaluation = build_augment(random_cfg, train=False)
    assert torch.equal(evaluation(image=image)["image"], evaluation(image=image)["image"])
    again = build_augment(random_cfg, train=True, seed=1)
    assert torch.equal(again(image=image)["image"], outputs[0])  # seeded


def test_unknown_augment_key_is_an_error():
    with pytest.raises(ValueError, match="rotation"):
        build_augment(cfg(augment={"rotation": 10}), train=True)
