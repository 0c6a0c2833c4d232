"""`trainer.sync_batchnorm=true`: BatchNorm statistics over the GLOBAL batch under torchrun.

On CUDA torch's `nn.SyncBatchNorm` does it with fused kernels. torch's SyncBatchNorm refuses CPU
tensors, so CPU ranks (gloo: CI, laptops) get `CPUSyncBatchNorm` — the same arithmetic in plain
autograd: per-channel sum, sum of squares and count, summed over ranks with the differentiable
`torch.distributed.nn.functional.all_reduce` (its backward all-reduces the gradients of those
statistics), so both the forward statistics and the gradient equal one process's on the global
batch. Eval mode uses the running statistics and talks to nobody.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class CPUSyncBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm{1,2,3}d whose training statistics are those of the batch summed over ranks."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2-D input (got {input.dim()}-D)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0, *range(2, x.dim())]
        local_n = x.numel() // x.shape[1]
        stats = torch.cat([x.sum(dims), (x * x).sum(dims),
                           torch.full((1,), float(local_n), dtype=x.dtype, device=x.device)])
        stats = all_reduce(stats)  # differentiable SUM over ranks
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0.0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                factor = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var.detach() * n.detach() / (n.detach() - 1).clamp_min(1.0)
                self.running_mean.mul_(1 - factor).add_(mean.detach(), alpha=factor)
                self.running_var.mul_(1 - factor).add_(unbiased, alpha=factor)
        shape = [1, c] + [1] * (x.dim() - 2)
        out = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out


def convert(module: nn.Module, device_type: str, keep: frozenset[int] = frozenset()) -> tuple[nn.Module, int]:
    """`module` with every BatchNorm layer made synchronous (torch's SyncBatchNorm on CUDA, ours
    elsewhere), parameters, buffers and requires_grad carried over; layers whose id is in `keep`
    stay as they are (a task's frozen BatchNorm layers, which it holds references to and keeps in
    eval mode); and how many layers were converted."""
    cls = nn.SyncBatchNorm if device_type == "cuda" else CPUSyncBatchNorm
    count = 0

    def swap(child: nn.Module) -> nn.Module:
        nonlocal count
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, cls) \
                and id(child) not in keep:
            new = cls(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            new.load_state_dict(child.state_dict())
            tensors = [*child.parameters(), *child.buffers()]
            if tensors:
                new.to(tensors[0].device)
            for p_new, p_old in zip(new.parameters(), child.parameters()):
                p_new.requires_grad_(p_old.requires_grad)
            new.train(child.training)
            count += 1
            return new
        for name, grandchild in list(child.named_children()):
            setattr(child, name, swap(grandchild))
        return child

    return swap(module), count
