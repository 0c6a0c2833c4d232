"""Batched captum attributions for a `Classifier` that returns one logit per image.

Every method returns a float32 array (B, H, W) at input resolution. Sign conventions:

* ``gradcam``: ReLU'd by default (as the original's figures); ``gradcam_relu=False`` keeps the sign.
* ``saliency``: absolute gradient (unsigned).
* ``guided_gradcam``, ``integrated_gradients``, ``gradient_shap``, ``occlusion``: signed
  (positive = evidence for cardiomegaly); rendered with a diverging colour map centred at 0.

Occlusion uses the original's 15×15 window and stride 8, defined at 224 px (the original's input
size) and scaled linearly with the image height, so the occluder covers the same share of the film
at any resolution (e.g. 64 px → window 4, stride 2; 512 px → window 34, stride 18).
"""
from __future__ import annotations

import warnings
from contextlib import contextmanager
from typing import Callable, Iterator, Sequence, Union

import numpy as np
import torch
from torch import nn

METHODS = ("gradcam", "guided_gradcam", "saliency", "integrated_gradients", "gradient_shap", "occlusion")
SIGNED_METHODS = frozenset({"guided_gradcam", "integrated_gradients", "gradient_shap", "occlusion"})
#: Resolution at which the original's occlusion window (15) and stride (8) were defined.
OCCLUSION_REFERENCE_SIZE = 224

#: A custom method: `(model, images) -> (B,1,H,W) or (B,H,W)` attributions (used by sanity tests).
AttributionFn = Callable[[nn.Module, torch.Tensor], torch.Tensor]
Method = Union[str, AttributionFn]


class PositiveScore(nn.Module):
    """Exposes a classifier's positive-class logit as a (B, 1) output so captum uses `target=0`.

    Multi-output models (B, K) pass through unchanged; then `target` picks the column.
    """

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(images)
        return out.unsqueeze(1) if out.ndim == 1 else out


def method_name(method: Method) -> str:
    return method if isinstance(method, str) else getattr(method, "__name__", type(method).__name__)


def is_signed(method: Method, gradcam_relu: bool = True) -> bool:
    """Whether a method's maps carry a sign (diverging colour map, symmetric limits)."""
    if method == "gradcam":
        return not gradcam_relu
    return method in SIGNED_METHODS


def resolve_layer(model: nn.Module, layer: str | nn.Module | None) -> nn.Module:
    """Default `model.encoder.gradcam_layer`; a dotted name (`encoder.net.layer3`) overrides it."""
    if isinstance(layer, nn.Module):
        return layer
    if layer is None or layer == "":
        encoder = getattr(model, "encoder", None)
        if encoder is None or not hasattr(encoder, "gradcam_layer"):
            raise ValueError(f"{type(model).__name__} has no `encoder.gradcam_layer`; pass explain.layer=<module name>, "
                             f"e.g. one of {_layer_examples(model)}")
        return encoder.gradcam_layer
    try:
        return model.get_submodule(str(layer))
    except AttributeError as err:
        raise ValueError(f"explain.layer={layer!r} is not a module of {type(model).__name__}. "
                         f"Valid names include: {_layer_examples(model)}") from err


def _layer_examples(model: nn.Module, limit: int = 8) -> str:
    names = [n for n, m in model.named_modules() if n and (len(list(m.children())) > 0)]
    shallow = sorted(names, key=lambda n: (n.count("."), n))
    preferred = [n for n in shallow if n.count(".") >= 2][:limit] or shallow[:limit]
    return ", ".join(preferred)


def occlusion_geometry(height: int, window: int = 15, stride: int = 8,
                       reference_size: int | None = OCCLUSION_REFERENCE_SIZE) -> tuple[int, int]:
    """Window and stride in pixels for an image of `height` (scaled from `reference_size`)."""
    if reference_size is None:
        return int(window), int(stride)
    scale = height / reference_size
    return max(2, round(window * scale)), max(1, round(stride * scale))


@contextmanager
def _non_inplace_relus(model: nn.Module) -> Iterator[None]:
    """Guided backprop hooks ReLU modules; in-place ReLUs break those hooks, so switch them off."""
    switched = [m for m in model.modules() if isinstance(m, nn.ReLU) and m.inplace]
    for module in switched:
        module.inplace = False
    try:
        yield
    finally:
        for module in switched:
            module.inplace = True


def blur_images(images: torch.Tensor, sigma_fraction: float = 0.05) -> torch.Tensor:
    """Gaussian-blurred copies (sigma = 5 % of the height): an "uninformative" film baseline."""
    import cv2

    sigma = max(images.shape[-2] * sigma_fraction, 1.0)
    arr = images.detach().cpu().float().numpy()
    out = np.stack([cv2.GaussianBlur(img[0], (0, 0), sigmaX=sigma)[None] for img in arr])
    return torch.from_numpy(out).to(images.device, images.dtype)


def _attribute_batch(wrapped: PositiveScore, x: torch.Tensor, method: str, *, layer: nn.Module, target: int,
                     internal_batch_size: int, n_steps: int, n_samples: int, gradcam_relu: bool,
                     occlusion: tuple[int, int], baselines: str, seed: int) -> torch.Tensor:
    from captum import attr as ca

    if method == "gradcam":
        cam = ca.LayerGradCam(wrapped, layer).attribute(x, target=target, relu_attributions=gradcam_relu)
        return ca.LayerAttribution.interpolate(cam, tuple(x.shape[-2:]), interpolate_mode="bilinear")
    if method == "guided_gradcam":
        with _non_inplace_relus(wrapped), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
            return ca.GuidedGradCam(wrapped, layer).attribute(x, target=target, interpolate_mode="bilinear")
    if method == "saliency":
        return ca.Saliency(wrapped).attribute(x, target=target, abs=True)
    if method == "integrated_gradients":
        base = blur_images(x) if baselines == "blur" else torch.zeros_like(x)
        return ca.IntegratedGradients(wrapped).attribute(x, baselines=base, target=target, n_steps=n_steps,
                                                         internal_batch_size=internal_batch_size)
    if method == "gradient_shap":
        # SHAP needs a baseline *distribution*; captum shares it across a call, so each image gets its
        # own call with {black film, blurred copy of itself} (+ input noise) and the samples batch.
        shap = ca.GradientShap(wrapped)
        torch.manual_seed(seed)
        out = []
        for img in x.split(1):
            base = torch.cat([torch.zeros_like(img), blur_images(img)]) if baselines != "zero" else torch.zeros_like(img)
            out.append(shap.attribute(img, baselines=base, n_samples=n_samples, stdevs=0.05, target=target))
        return torch.cat(out)
    if method == "occlusion":
        window, stride = occlusion
        per_eval = max(1, internal_batch_size // len(x))
        occluder = blur_images(x) if baselines == "blur" else 0.0
        return ca.Occlusion(wrapped).attribute(x, sliding_window_shapes=(1, window, window), strides=(1, stride, stride),
                                               baselines=occluder, target=target, perturbations_per_eval=per_eval)
    raise ValueError(f"unknown attribution method {method!r}; choose from {', '.join(METHODS)}")


def compute_attributions(model: nn.Module, images: torch.Tensor | np.ndarray, method: Method, *,
                         layer: str | nn.Module | None = None, target: int | None = None, batch_size: int = 16,
                         internal_batch_size: int = 64, occlusion_window: int = 15, occlusion_stride: int = 8,
                         occlusion_reference_size: int | None = OCCLUSION_REFERENCE_SIZE, n_steps: int = 32,
                         n_samples: int = 16, baselines: str = "zero", gradcam_relu: bool = True,
                         device: str | torch.device = "cpu", progress: bool = True, seed: int = 0) -> np.ndarray:
    """Attribution maps (B, H, W) float32 for `images` (B, 1, H, W) in [0, 1].

    `batch_size` images go through each call; `internal_batch_size` caps the forward batch of the
    path/perturbation methods (IG steps, occlusion patches). `baselines` ("zero" | "blur") sets the
    IG baseline and the occluder (black patches, as the original, can be out of distribution: a
    model may *raise* its score for any dark hole); GradientSHAP uses {zero, blur} unless "zero".
    `method` may also be a callable `(model, images) -> maps`.
    """
    from tqdm.auto import tqdm

    images = torch.as_tensor(images, dtype=torch.float32)
    if images.ndim != 4 or images.shape[1] != 1:
        raise ValueError(f"images must be (B, 1, H, W); got {tuple(images.shape)}")
    if isinstance(method, str) and method not in METHODS:
        raise ValueError(f"unknown attribution method {method!r}; choose from {', '.join(METHODS)}")
    if baselines not in ("zero", "blur"):
        raise ValueError(f"baselines={baselines!r}: use 'zero' or 'blur'")
    if len(images) == 0:
        return np.zeros((0, *images.shape[-2:]), np.float32)
    model = model.to(device).eval()
    wrapped = PositiveScore(model)
    module = resolve_layer(model, layer) if method in ("gradcam", "guided_gradcam") else None
    geometry = occlusion_geometry(images.shape[-2], occlusion_window, occlusion_stride, occlusion_reference_size)
    maps = []
    batches = list(images.split(batch_size))
    for batch in tqdm(batches, desc=f"explain {method_name(method)}", disable=not progress, leave=False):
        x = batch.to(device).detach().clone().requires_grad_(True)
        if callable(method):
            out = method(model, x)
        else:
            out = _attribute_batch(wrapped, x, method, layer=module, target=0 if target is None else target,
                                   internal_batch_size=internal_batch_size, n_steps=n_steps, n_samples=n_samples,
                                   gradcam_relu=gradcam_relu, occlusion=geometry, baselines=baselines, seed=seed)
        out = out.detach().float()
        maps.append((out[:, 0] if out.ndim == 4 else out).cpu().numpy())
    return np.concatenate(maps).astype(np.float32, copy=False)


def compute_all(model: nn.Module, images: torch.Tensor, methods: Sequence[Method], **kwargs) -> dict[str, np.ndarray]:
    """`compute_attributions` for several methods: {method name: (B, H, W)}."""
    return {method_name(m): compute_attributions(model, images, m, **kwargs) for m in methods}
