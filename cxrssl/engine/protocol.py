"""What the engine needs from a task, as a `typing.Protocol` (the engine never imports `cxrssl.tasks`).

The agreed contract (notes/INTERFACE.md): the loop moves the batch to the device, then calls
`training_step` inside autocast and `validation_step` under `no_grad`; both return a dict of
0-dim tensors (the loss keeps its graph while training) so the loop can sum them on the device
and synchronise with the host only every `trainer.log_every_n_steps` steps.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class TrainableTask(Protocol):
    name: str
    monitor: str
    monitor_mode: str

    def training_step(self, batch: dict) -> dict[str, torch.Tensor]: ...

    def validation_step(self, batch: dict) -> dict[str, Any]: ...

    def on_after_optimizer_step(self, global_step: int, max_steps: int) -> None: ...

    def batch_size(self, batch: dict) -> int: ...

    def on_validation_epoch_end(self) -> dict[str, float]: ...

    def compute_metrics(self) -> dict[str, float]: ...

    def reset_metrics(self) -> None: ...

    def epoch_artifacts(self, batch: dict, outputs: dict[str, torch.Tensor], out_dir: Path,
                        epoch: int) -> list[Path]: ...

    def hparams(self) -> dict: ...

    # nn.Module surface the loop uses
    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...

    def state_dict(self, *args, **kwargs) -> dict[str, Any]: ...

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False): ...

    def train(self, mode: bool = True): ...

    def eval(self): ...

    def to(self, *args, **kwargs): ...
