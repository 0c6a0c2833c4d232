"""timm backbones as one-channel encoders that never touch the network.

Every task (age, sex, recon, cardiomegaly) wraps the same `Encoder`, so a checkpoint from any
pretext gives weights under the `encoder.` prefix that finetune can load.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

#: Values of `backbone.pretrained` that mean "random initialisation".
_NO_WEIGHTS = (None, "", False, "none", "null", "random")


class PretrainedWeightsError(ValueError):
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

        self.name = name
        kwargs = dict(features_only=True, in_chans=1, **timm_kwargs)
        weights = _local_weights(name, pretrained)
        if weights is not None:
            kwargs.update(pretrained=True, pretrained_cfg_overlay=dict(file=str(weights)))
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
