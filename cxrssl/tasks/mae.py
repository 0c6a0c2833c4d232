"""MAE (He et al., 2022; medical MAE, Xiao et al., 2023): hide most patches of a ViT's input,
encode only the visible ones, reconstruct the hidden pixels with a light decoder.

The encoder is the same `Encoder` every task has (timm ViT, one channel, weights under
`encoder.`), so finetune and probe load MAE checkpoints like any other. lightly's
`MaskedVisionTransformerTIMM` runs it on the kept tokens; it is held outside the module tree so
the ViT's weights appear once in the state dict. The masked-reconstruction pretext for CNNs
stays `pretext=recon`.
"""
from __future__ import annotations

import torch
from torch import nn

from cxrssl.tasks.ssl_common import SSLTask


def vit_of(encoder) -> nn.Module:
    """The timm VisionTransformer inside an `Encoder`, or a clear error for CNN backbones."""
    from timm.models.vision_transformer import VisionTransformer

    net = getattr(encoder, "net", None)
    vit = getattr(net, "model", net)
    if not isinstance(vit, VisionTransformer):
        raise ValueError(f"pretext=mae needs a ViT backbone (backbone=vit_tiny or vit_small), got "
                         f"{getattr(encoder, 'name', type(encoder).__name__)!r}; for CNNs use pretext=recon "
                         "with pretext.mask_ratio > 0")
    return vit


class MAETask(SSLTask):
    name = "mae"

    def __init__(self, encoder, mask_ratio: float = 0.75, decoder_dim: int = 128, decoder_depth: int = 2,
                 decoder_heads: int = 4, norm_pix_loss: bool = True, init_weights: bool = True,
                 monitor: dict | None = None):
        super().__init__(encoder, monitor)
        from lightly.models.modules import MaskedVisionTransformerDecoderTIMM, MaskedVisionTransformerTIMM

        if not 0.0 < float(mask_ratio) < 1.0:
            raise ValueError(f"pretext.task.mask_ratio={mask_ratio}: must be in (0, 1)")
        vit = vit_of(encoder)
        # init_weights=False keeps weights loaded from backbone.pretrained.
        masked = MaskedVisionTransformerTIMM(vit, weight_initialization="" if init_weights else "skip",
                                             pos_embed_initialization="sincos" if init_weights else "skip")
        self._masked = (masked,)  # a tuple: not a registered submodule (no duplicate weights)
        self.patch_size = int(vit.patch_embed.patch_size[0])
        self.sequence_length = masked.sequence_length
        self.num_prefix = int(vit.num_prefix_tokens)
        self.decoder_embed = nn.Linear(vit.embed_dim, int(decoder_dim))
        self.decoder = MaskedVisionTransformerDecoderTIMM(
            num_patches=vit.patch_embed.num_patches, embed_dim=int(decoder_dim), depth=int(decoder_depth),
            num_heads=int(decoder_heads), num_prefix_tokens=self.num_prefix)
        self.decoder_pred = nn.Linear(int(decoder_dim), self.patch_size ** 2)
        self.mask_ratio, self.norm_pix_loss = float(mask_ratio), bool(norm_pix_loss)
        self._hp = {"mask_ratio": self.mask_ratio, "decoder_dim": int(decoder_dim),
                    "decoder_depth": int(decoder_depth), "decoder_heads": int(decoder_heads),
                    "norm_pix_loss": self.norm_pix_loss}

    def token_masks(self, batch_size: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """(idx_keep, idx_mask) from lightly; fixed (seed 0) in eval so the val loss is comparable."""
        from lightly.models.utils import random_token_mask

        size = (batch_size, self.sequence_length)
        if self.training:
            return random_token_mask(size, self.mask_ratio, device=device)
        devices = [device] if torch.device(device).type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            return random_token_mask(size, self.mask_ratio, device=device)

    def reconstruct(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        from lightly.models import utils

        x = (images - self.encoder.mean) / self.encoder.std
        idx_keep, idx_mask = self.token_masks(len(x), x.device)
        encoded = self._masked[0].encode(x, idx_keep=idx_keep)
        tokens = self.decoder_embed(encoded)
        full = utils.repeat_token(self.decoder.mask_token, (len(x), self.sequence_length))
        full = utils.set_at_index(full, idx_keep, tokens.type_as(full))
        decoded = self.decoder(full)
        pred = self.decoder_pred(utils.get_at_index(decoded, idx_mask)).float()
        # idx_mask counts the class token as position 0; patches start at 0
        target = utils.get_at_index(utils.patchify(x.float(), self.patch_size), idx_mask - self.num_prefix)
        return {"pred": pred, "target": target, "idx_mask": idx_mask}

    def mae_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean squared error on the hidden patches; with `norm_pix_loss` each target patch is
        standardised first (MAE's default: better features, less effort on absolute brightness)."""
        if self.norm_pix_loss:
            mean, var = target.mean(dim=-1, keepdim=True), target.var(dim=-1, keepdim=True)
            target = (target - mean) / (var + 1e-6).sqrt()
        return ((pred - target) ** 2).mean()

    def training_step(self, batch):
        out = self.reconstruct(batch["image"])
        loss = self.mae_loss(out["pred"], out["target"])
        return {"loss": loss, "mae_mse": loss.detach()}

    def ssl_loss(self, views):
        out = self.reconstruct(views[0])
        loss = self.mae_loss(out["pred"], out["target"])
        return loss, {"loss": loss.detach()}

    def validation_step(self, batch):
        loss, logs = self.ssl_loss([batch["image"]])
        self.embedding_monitor.update(self.embed(batch["image"]), batch)
        return {**logs, "loss": loss.detach()}

    def loss(self, outputs, batch):
        return self.ssl_loss([batch["image"]])

    def hparams(self):
        return dict(self._hp)
