"""DINO (Caron et al., 2021; RAD-DINO for chest X-rays): a student matches the centred,
sharpened output distribution of a momentum teacher, across global and local crops.

Multi-crop: the teacher sees only the global views, the student every view (local crops teach
local-to-global correspondence). Collapse is held off by the teacher centre (an EMA of teacher
outputs, all-reduced across ranks by lightly) and a low teacher temperature warmed up linearly
over the first `warmup_frac` of training; both run in `on_after_optimizer_step`/the loss.
"""
from __future__ import annotations

import torch

from cxrssl.tasks.ssl_common import SSLTask, make_teacher, pooled


def teacher_temperature(step: int, max_steps: int, start: float, end: float, warmup_frac: float) -> float:
    """Linear warm-up from `start` to `end` over the first `warmup_frac` of the steps, then `end`."""
    warmup = int(round(float(warmup_frac) * max(int(max_steps), 1)))
    if warmup <= 0 or step >= warmup:
        return float(end)
    return float(start + (end - start) * step / warmup)


class DINOTask(SSLTask):
    name = "dino"
    ema_pairs = (("encoder", "teacher_encoder"), ("head", "teacher_head"))

    def __init__(self, encoder, hidden_dim: int = 512, bottleneck_dim: int = 64, output_dim: int = 1024,
                 student_temp: float = 0.1, teacher_temp: float = 0.04, warmup_teacher_temp: float = 0.04,
                 warmup_frac: float = 0.1, center_momentum: float = 0.9, momentum: float = 0.996,
                 momentum_end: float = 1.0, n_global: int = 2, monitor: dict | None = None):
        super().__init__(encoder, monitor)
        from lightly.loss import DINOLoss
        from lightly.models.modules import DINOProjectionHead

        def new_head():
            return DINOProjectionHead(encoder.out_channels, int(hidden_dim), int(bottleneck_dim), int(output_dim))

        self.head = new_head()
        self.teacher_encoder = make_teacher(self.encoder)
        self.teacher_head = make_teacher(self.head, new_head)  # weight_norm: no deepcopy
        self.criterion = DINOLoss(output_dim=int(output_dim), warmup_teacher_temp=float(warmup_teacher_temp),
                                  teacher_temp=float(teacher_temp), student_temp=float(student_temp),
                                  center_momentum=float(center_momentum))
        self.n_global = int(n_global)
        self.temp_start, self.temp_end, self.warmup_frac = float(warmup_teacher_temp), float(teacher_temp), float(warmup_frac)
        self.current_teacher_temp = self.temp_start if self.warmup_frac > 0 else self.temp_end
        self.momentum_start, self.momentum_end = float(momentum), float(momentum_end)
        self.momentum = self.momentum_start
        self._hp = {"hidden_dim": int(hidden_dim), "bottleneck_dim": int(bottleneck_dim), "output_dim": int(output_dim),
                    "student_temp": float(student_temp), "teacher_temp": float(teacher_temp),
                    "warmup_teacher_temp": float(warmup_teacher_temp), "warmup_frac": float(warmup_frac),
                    "center_momentum": float(center_momentum), "momentum": float(momentum),
                    "momentum_end": float(momentum_end), "n_global": self.n_global}

    def ssl_loss(self, views):
        globals_ = views[:self.n_global]
        with torch.no_grad():
            teacher_out = [self.teacher_head(pooled(self.teacher_encoder(v))).float() for v in globals_]
        student_out = [self.head(self.embed(v)).float() for v in views]
        center = None if self.training else self.criterion.center.clone()
        loss = self.criterion(teacher_out, student_out, teacher_temp=self.current_teacher_temp)
        if center is not None:  # validation must not move the training centre
            self.criterion.center.copy_(center)
        return loss, {"loss": loss.detach(),
                      "teacher_temp": torch.tensor(self.current_teacher_temp, device=loss.device)}

    def on_after_optimizer_step(self, global_step: int, max_steps: int) -> None:
        super().on_after_optimizer_step(global_step, max_steps)  # the EMA teacher (ema_pairs)
        self.current_teacher_temp = teacher_temperature(global_step, max_steps, self.temp_start,
                                                        self.temp_end, self.warmup_frac)

    def hparams(self):
        return dict(self._hp)
