"""Reconstruction pretext: an autoencoder over the backbone, optionally masked-patch inpainting.

Options from the original work and from MAE-style pretraining:
- `mask_ratio` > 0 hides that share of `patch_size` patches (filled with 0.5) and scores the loss on
  the hidden patches only, so the encoder must infer anatomy rather than copy pixels;
- `ignore_zero` drops pixels that are exactly 0 in the input (letterbox borders, collimation) from
  the loss, as the original's "MSE over non-zero pixels".
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from cxrssl.models import Encoder
from cxrssl.models.heads import Decoder
from cxrssl.tasks.base import Task


class ReconTask(Task):
    name = "recon"
    monitor = "loss"
    monitor_mode = "min"

    def __init__(self, encoder: Encoder, mask_ratio: float = 0.0, patch_size: int = 8,
                 ignore_zero: bool = False, decoder_width: int = 64, grid_images: int = 8):
        super().__init__()
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"pretext.mask_ratio={mask_ratio}: must be in [0, 1)")
        self.encoder = encoder
        self.decoder = Decoder(encoder.out_channels, encoder.reduction, decoder_width)
        self.mask_ratio, self.patch_size = float(mask_ratio), int(patch_size)
        self.ignore_zero, self.grid_images = bool(ignore_zero), int(grid_images)
        self._sum = self._count = 0.0

    def patch_mask(self, images: torch.Tensor) -> torch.Tensor:
        """1 where a patch is hidden; fixed per batch position in eval so val loss is comparable."""
        b, _, h, w = images.shape
        gh, gw = -(-h // self.patch_size), -(-w // self.patch_size)
        gen = None if self.training else torch.Generator(device=images.device).manual_seed(0)
        noise = torch.rand(b, 1, gh, gw, device=images.device, generator=gen)
        hidden = (noise < self.mask_ratio).to(images.dtype)
        return F.interpolate(hidden, scale_factor=self.patch_size, mode="nearest")[..., :h, :w]

    def forward(self, images):
        out = {"input": images}
        if self.mask_ratio > 0:
            hidden = self.patch_mask(images)
            images = images * (1 - hidden) + 0.5 * hidden
            out.update(hidden=hidden, masked_input=images)
        out["recon"] = self.decoder(self.encoder(images), images.shape[-2:]).float()
        return out

    def _pixel_weights(self, outputs) -> torch.Tensor:
        target = outputs["input"].float()
        weight = torch.ones_like(target)
        if self.mask_ratio > 0:
            weight = weight * outputs["hidden"].float()
        if self.ignore_zero:
            weight = weight * (target > 0).float()
        return weight

    def _squared_error(self, outputs) -> tuple[torch.Tensor, torch.Tensor]:
        weight = self._pixel_weights(outputs)
        return ((outputs["recon"] - outputs["input"].float()) ** 2 * weight).sum(), weight.sum()

    def loss(self, outputs, batch):
        total, n = self._squared_error(outputs)
        loss = total / n.clamp_min(1.0)
        return loss, {"loss": loss.detach()}

    def update_metrics(self, outputs, batch):
        total, n = self._squared_error(outputs)
        self._sum += float(total)
        self._count += float(n)

    def compute_metrics(self):
        if self._count == 0:
            return {}
        mse = self._sum / self._count
        return {"loss": mse, "psnr": float(10 * torch.log10(torch.tensor(1.0 / max(mse, 1e-12))))}

    def reset_metrics(self):
        self._sum = self._count = 0.0

    def epoch_artifacts(self, batch, outputs, out_dir: Path, epoch: int) -> list[Path]:
        """Rows: input, (masked input), reconstruction — one PNG per epoch."""
        from torchvision.utils import save_image

        n = min(self.grid_images, outputs["input"].shape[0])
        rows = [outputs["input"][:n]]
        if "masked_input" in outputs:
            rows.append(outputs["masked_input"][:n])
        rows.append(outputs["recon"][:n])
        path = Path(out_dir) / f"recon_epoch{epoch:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(torch.cat([r.detach().float().cpu() for r in rows]).clamp(0, 1), path, nrow=n, padding=2)
        return [path]

    def hparams(self):
        return {"mask_ratio": self.mask_ratio, "patch_size": self.patch_size, "ignore_zero": self.ignore_zero}
