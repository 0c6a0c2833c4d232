"""DINO (Caron et al., 2021; RAD-DINO for chest X-rays): a student matches the centred,
sharpened output distribution of a momentum teacher, across global and local crops.

Multi-crop: the teacher sees only the global views, the student every view (local crops teach
local-to-global correspondence). Collapse is held off by the teacher centre (an EMA of teacher
outputs, all-reduced across ranks by lightly) and a low teacher temperature warmed up linearly
over the first `warmup_frac` of training; both run in `on_after_optimizer_step`/the loss.
"""
from __future__ import annotations

import math

import torch

from cxrssl.tasks.ssl_common import SSLTask, make_teacher, pooled, warn_collapse


def teacher_temperature(step: int, max_steps: int, start: float, end: float, warmup_frac: float) -> float:
    """Linear warm-up from `start` to `end` over the first `warmup_frac` of the steps, then `end`."""
    warmup = int(round(float(warmup_frac) * max(int(max_steps), 1)))
    if warmup <= 0 or step >= warmup:
        return float(end)
    return float(start + (end - start) * step / warmup)


def head_batch_norm(setting: bool | str, encoder) -> bool:
    """`auto`: BatchNorm in the head for CNNs, none for ViTs (DINO/lightly's advice). Why it
    matters for CNNs: their pooled features share one large mean direction (per-channel sd ~0.01-0.05
    around means ~0.1-0.6 on the tiny CNN), so a head without BN maps every image to nearly the
    same output; the teacher centre then subtracts that common part and leaves a flat
    distribution (the uniform collapse: loss -> log K, no signal for the student)."""
    if isinstance(setting, str):
        if setting != "auto":
            raise ValueError(f"pretext.task.batch_norm={setting!r}: expected true, false or auto")
        return not str(getattr(encoder, "name", "")).startswith(("vit", "deit", "eva"))
    return bool(setting)


class HeadEntropyMonitor:
    """DINO's own collapse diagnostics (Caron et al. 2021, sec. 5.3) on validation batches: the
    entropy of the centred, sharpened teacher distribution the student is trained to match.

    The backbone monitor cannot see a collapse of the head: the embedding can stay spread while
    the teacher says nothing. `head_entropy_ratio` = mean per-image entropy / log K: near 1 the
    teacher is uniform (the centre dominates; loss -> log K). `head_marginal_entropy_ratio` =
    entropy of the batch-averaged teacher distribution / log K: near 0 every image gets the same
    one-hot output (sharpening dominates); per-image entropy is then near 0 too."""

    def __init__(self, output_dim: int, uniform_ratio: float = 0.98, onehot_ratio: float = 0.02):
        self.log_k = math.log(int(output_dim))
        self.uniform_ratio, self.onehot_ratio = float(uniform_ratio), float(onehot_ratio)
        self.reset()

    def reset(self) -> None:
        self._entropy_sum, self._probs_sum, self._n = 0.0, None, 0

    @torch.no_grad()
    def update(self, teacher_out: torch.Tensor, center: torch.Tensor, temperature: float) -> None:
        """teacher_out: (views, batch, K) raw teacher logits; the same centring and sharpening as the loss."""
        probs = torch.softmax((teacher_out.float() - center.float()) / float(temperature), dim=-1).flatten(0, -2)
        self._entropy_sum += float(-(probs * probs.clamp_min(1e-12).log()).sum(-1).sum())
        total = probs.sum(0).double().cpu()
        self._probs_sum = total if self._probs_sum is None else self._probs_sum + total
        self._n += len(probs)

    def compute(self) -> dict[str, float]:
        if not self._n:
            return {}
        entropy = self._entropy_sum / self._n
        marginal = self._probs_sum / self._n
        marginal_entropy = float(-(marginal * marginal.clamp_min(1e-12).log()).sum())
        out = {"head_entropy": entropy, "head_entropy_ratio": entropy / self.log_k,
               "head_marginal_entropy_ratio": marginal_entropy / self.log_k}
        if out["head_entropy_ratio"] >= self.uniform_ratio:
            warn_collapse(f"DINO head collapse (uniform) suspected: the centred teacher's entropy is "
                          f"{entropy:.3g} = {out['head_entropy_ratio']:.1%} of log K = {self.log_k:.3g} (warn "
                          f"at {self.uniform_ratio:.0%}); the student gets no signal. Use a head with "
                          "BatchNorm for CNNs (pretext.task.batch_norm), lower pretext.task.teacher_temp "
                          "or pretext.task.momentum")
        elif out["head_marginal_entropy_ratio"] <= self.onehot_ratio:
            warn_collapse(f"DINO head collapse (one-hot) suspected: the batch-averaged teacher output's "
                          f"entropy is {out['head_marginal_entropy_ratio']:.1%} of log K (warn below "
                          f"{self.onehot_ratio:.0%}): every image gets the same output. Lower "
                          "pretext.task.center_momentum (a faster centre), raise teacher_temp or lower the LR")
        return out


class DINOTask(SSLTask):
    name = "dino"
    ema_pairs = (("encoder", "teacher_encoder"), ("head", "teacher_head"))

    def __init__(self, encoder, hidden_dim: int = 512, bottleneck_dim: int = 64, output_dim: int = 1024,
                 student_temp: float = 0.1, teacher_temp: float = 0.04, warmup_teacher_temp: float = 0.04,
                 warmup_frac: float = 0.1, center_momentum: float = 0.9, momentum: float = 0.996,
                 momentum_end: float = 1.0, n_global: int = 2, batch_norm: bool | str = "auto",
                 head_uniform_ratio: float = 0.98, head_onehot_ratio: float = 0.02, monitor: dict | None = None):
        super().__init__(encoder, monitor)
        from lightly.loss import DINOLoss
        from lightly.models.modules import DINOProjectionHead

        use_bn = head_batch_norm(batch_norm, encoder)

        def new_head():
            return DINOProjectionHead(encoder.out_channels, int(hidden_dim), int(bottleneck_dim), int(output_dim),
                                      batch_norm=use_bn)

        self.head = new_head()
        self.head_monitor = HeadEntropyMonitor(int(output_dim), head_uniform_ratio, head_onehot_ratio)
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
                    "momentum_end": float(momentum_end), "n_global": self.n_global, "batch_norm": use_bn}

    def ssl_loss(self, views):
        globals_ = views[:self.n_global]
        with torch.no_grad():
            teacher_out = [self.teacher_head(pooled(self.teacher_encoder(v))).float() for v in globals_]
        student_out = [self.head(self.embed(v)).float() for v in views]
        center = None if self.training else self.criterion.center.clone()
        if center is not None:  # what the student is asked to match, before the loss moves the centre
            self.head_monitor.update(torch.stack(teacher_out), center, self.current_teacher_temp)
        loss = self.criterion(teacher_out, student_out, teacher_temp=self.current_teacher_temp)
        if center is not None:  # validation must not move the training centre
            self.criterion.center.copy_(center)
        return loss, {"loss": loss.detach(),
                      "teacher_temp": torch.tensor(self.current_teacher_temp, device=loss.device)}

    def on_after_optimizer_step(self, global_step: int, max_steps: int) -> None:
        super().on_after_optimizer_step(global_step, max_steps)  # the EMA teacher (ema_pairs)
        self.current_teacher_temp = teacher_temperature(global_step, max_steps, self.temp_start,
                                                        self.temp_end, self.warmup_frac)

    def on_validation_epoch_end(self) -> dict[str, float]:
        if self._epoch_metrics is None:  # computed (and warned about) once per epoch
            self._epoch_metrics = {**self.embedding_monitor.compute(), **self.head_monitor.compute()}
        return dict(self._epoch_metrics)

    def reset_metrics(self) -> None:
        super().reset_metrics()
        self.head_monitor.reset()

    def hparams(self):
        return dict(self._hp)
