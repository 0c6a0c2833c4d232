"""timm backbones as one-channel encoders that never touch the network.

Every task (age, sex, recon, cardiomegaly) wraps the same `Encoder`, so a checkpoint from any
pretext gives weights under the `encoder.` prefix that finetune can load.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cxrssl.models.safe_weights import UnsafeWeightsError, load_weights_file

from cxrssl.errors import UserError

#: Values of `backbone.pretrained` that mean "random initialisation".
_NO_WEIGHTS = (None, "", False, "none", "null", "random")

#: `backbone.timm_kwargs` that may reach `timm.create_model`: architecture knobs only. Anything
#: that makes timm read a file or the network (checkpoint_path, pretrained_cfg*, cache_dir,
#: pretrained) is refused, so a checkpoint's embedded config cannot point timm's loader at a file.
ALLOWED_TIMM_KWARGS = frozenset({
    "drop_rate", "drop_path_rate", "drop_block_rate", "output_stride", "out_indices", "img_size",
    "patch_size", "dynamic_img_size", "dynamic_img_pad", "global_pool", "num_classes", "zero_init_last",
})


def check_timm_kwargs(timm_kwargs: dict | None) -> dict:
    """``timm_kwargs`` limited to ALLOWED_TIMM_KWARGS with plain scalar (or list-of-int) values."""
    kwargs = dict(timm_kwargs or {})
    refused = sorted(set(kwargs) - ALLOWED_TIMM_KWARGS)
    if refused:
        raise PretrainedWeightsError(
            f"backbone.timm_kwargs: {refused} not allowed (allowed: {sorted(ALLOWED_TIMM_KWARGS)}); "
            "weights are given with backbone.pretrained=<file>, never through timm's own loaders")
    for key, value in kwargs.items():
        plain = value is None or isinstance(value, (bool, int, float)) or (
            isinstance(value, str) and len(value) <= 64) or (
            isinstance(value, (list, tuple)) and len(value) <= 8 and all(isinstance(v, int) for v in value))
        if not plain:
            raise PretrainedWeightsError(f"backbone.timm_kwargs.{key}: {str(value)[:80]!r} is not a plain value")
    return kwargs


def check_backbone_name(name: str) -> str:
    """A model name from timm's local registry; hub prefixes (`hf-hub:`, `timm/...`) are refused
    because they would make timm fetch code or weights from the network."""
    import timm

    text = str(name)
    if ":" in text or "/" in text or len(text) > 100 or not timm.is_model(text):
        raise PretrainedWeightsError(
            f"backbone.name={text[:100]!r} is not a timm architecture name from the local registry "
            "(hub names such as hf-hub:... are not fetched); see conf/backbone/ or timm.list_models()")
    return text


class PretrainedWeightsError(UserError, ValueError):
    """`backbone.pretrained` names weights we cannot load offline."""


class Encoder(nn.Module):
    """timm `features_only` network returning its deepest feature map.

    Input is a 1-channel image in [0, 1]; intensity normalisation lives here (a fixed buffer), so
    datasets, reconstruction targets and attribution overlays all work in image space.
    """

    def __init__(self, name: str, pretrained: str | Path | None = None, mean: float = 0.5,
                 std: float = 0.25, **timm_kwargs):
        super().__init__()
        import timm

        self.name = check_backbone_name(name)
        kwargs = dict(features_only=True, in_chans=1, **check_timm_kwargs(timm_kwargs))
        weights = _local_weights(name, pretrained)
        if weights is not None:
            # cxrssl reads the file (weights_only / safetensors); timm only gets the tensors, then
            # adapts the stem to 1 channel and drops the classifier as for its own weights.
            try:
                state = load_weights_file(weights)
            except (UnsafeWeightsError, OSError) as err:
                raise PretrainedWeightsError(f"backbone.pretrained={weights}: {err}") from err
            kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(
                state_dict=state, file=None, url=None, hf_hub_id=None, source=""))
        try:
            self.net = timm.create_model(name, **kwargs)
        except RuntimeError as err:  # e.g. missing/unexpected keys in a local weights file
            if weights is None:
                raise
            raise PretrainedWeightsError(
                f"backbone.pretrained={weights}: could not load into timm model {name!r}: {err}") from err
        info = self.net.feature_info
        self.out_channels: int = info.channels()[-1]
        self.reduction: int = info.reduction()[-1]
        self.stage_names: list[str] = list(info.module_name())
        self.register_buffer("mean", torch.tensor(mean), persistent=False)
        self.register_buffer("std", torch.tensor(std), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.mean) / self.std)[-1]

    @property
    def stages(self) -> list[nn.Module]:
        """Feature stages in input → output order (what partial fine-tuning unfreezes)."""
        return [_submodule(self.net, n) for n in self.stage_names]

    def stage_parameters(self) -> list[list[tuple[str, nn.Parameter]]]:
        """Parameters grouped into stages in forward order: stage k owns everything registered
        after stage k-1's last parameter up to its own (so densenet's transition + denseblock4 +
        norm5 form the last block). Partial fine-tuning trains the last N of these groups."""
        ends = []
        names = [n for n, _ in self.net.named_parameters()]
        for stage in self.stage_names:
            prefixes = (stage + ".", stage.replace(".", "_") + ".")
            owned = [i for i, n in enumerate(names) if n.startswith(prefixes)]
            ends.append(max(owned) if owned else (ends[-1] if ends else -1))
        groups, start = [], 0
        params = list(self.net.named_parameters())
        for end in ends:
            groups.append(params[start:end + 1])
            start = end + 1
        groups[-1].extend(params[start:])  # anything after the last stage (rare) joins it
        return groups

    @property
    def gradcam_layer(self) -> nn.Module:
        """The module whose output is the deepest feature map: the usual Grad-CAM layer."""
        return self.stages[-1]


def _submodule(net: nn.Module, dotted: str) -> nn.Module:
    # FeatureListNet flattens "features.denseblock4" into the child "features_denseblock4".
    for candidate in (dotted, dotted.replace(".", "_")):
        try:
            return net.get_submodule(candidate)
        except AttributeError:
            continue
    raise KeyError(f"feature stage {dotted!r} not found in {type(net).__name__}")


def _local_weights(name: str, pretrained) -> Path | None:
    if pretrained in _NO_WEIGHTS:
        return None
    path = Path(str(pretrained)).expanduser()
    if path.is_file():
        return path
    hint = (f"cxrssl never downloads weights. Download them once on a machine with internet, e.g. "
            f"`python -c \"import timm, torch; m = timm.create_model('{name}', pretrained=True); "
            f"torch.save(m.state_dict(), '{name}.pth')\"`, then pass "
            f"backbone.pretrained=/path/to/{name}.pth (the first convolution is adapted to 1 channel).")
    if path.suffix or "/" in str(pretrained):
        raise PretrainedWeightsError(f"backbone.pretrained={pretrained}: file not found. {hint}")
    raise PretrainedWeightsError(
        f"backbone.pretrained={pretrained!r} is not a local file; hub weights are not fetched. {hint}")


def create_encoder(name: str, pretrained: str | Path | None = None, **timm_kwargs) -> Encoder:
    """Factory in the timm style: `create_encoder("densenet121", pretrained="w.pth")`."""
    return Encoder(name, pretrained=pretrained, **timm_kwargs)
