"""The pretext registry: a method is one module under `cxrssl.tasks` plus one
`conf/pretext/<name>.yaml` whose `task:` node names its class:

    task:
      _target_: cxrssl.tasks.simclr.SimCLRTask
      _partial_: true
      temperature: 0.1

`hydra.utils.instantiate` builds a partial that receives the encoder and the monitor settings.
Configs also travel inside checkpoints and MLflow runs, so every `_target_` (nested ones too) must
sit under an allow-listed prefix: loading a config can never import or call arbitrary code.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

#: Only classes/functions under these module prefixes may be instantiated from a config.
ALLOWED_TARGET_PREFIXES: tuple[str, ...] = ("cxrssl.tasks.",)


class UnsafeTargetError(ValueError):
    """A config names a `_target_` outside the allow-list."""


def check_targets(node: Any, where: str = "pretext.task") -> None:
    """Raise `UnsafeTargetError` naming the key if any `_target_` in `node` is not allow-listed."""
    if isinstance(node, (Mapping, DictConfig)):
        items = node.items() if isinstance(node, Mapping) else node.items_ex(resolve=False)
        for key, value in items:
            if key == "_target_":
                target = str(value)
                if not target.startswith(ALLOWED_TARGET_PREFIXES) or ".." in target:
                    raise UnsafeTargetError(
                        f"{where}._target_={target!r}: only targets under {list(ALLOWED_TARGET_PREFIXES)} may be "
                        "instantiated from a config (configs travel inside checkpoints and runs); add the "
                        "method as a module under cxrssl/tasks/")
            else:
                check_targets(value, f"{where}.{key}")
    elif isinstance(node, (list, tuple, ListConfig)):
        for i, value in enumerate(node):
            check_targets(value, f"{where}[{i}]")


def is_registered(pretext_cfg: Mapping) -> bool:
    """True for pretexts configured through a `task:` node (the SSL methods)."""
    return pretext_cfg.get("task") is not None


def build_registered_task(pretext_cfg: Mapping, encoder):
    """Instantiate `pretext_cfg.task` (after the allow-list check) with the encoder and the
    `pretext.monitor` settings."""
    from hydra.utils import instantiate

    task_cfg = pretext_cfg["task"]
    check_targets(task_cfg)
    if not isinstance(task_cfg, DictConfig):
        task_cfg = OmegaConf.create(dict(task_cfg))
    factory = instantiate(task_cfg, _partial_=True, _convert_="all")
    monitor = pretext_cfg.get("monitor")
    monitor = OmegaConf.to_container(monitor, resolve=True) if isinstance(monitor, DictConfig) else dict(monitor or {})
    task = factory(encoder=encoder, monitor=monitor)
    name = pretext_cfg.get("name")
    if name and getattr(task, "name", None) != name:
        raise ValueError(f"pretext.name={name!r} but pretext.task._target_ builds a {task.name!r} task; "
                         "fix conf/pretext/<name>.yaml")
    return task

