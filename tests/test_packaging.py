"""A non-editable install, run from an unrelated directory, finds every config and module."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(ROOT)], check=True, timeout=300)
    return next(out.glob("cxrssl-*.whl"))


def test_wheel_ships_every_config_and_subpackage(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    configs = {f"cxrssl/conf/{p.relative_to(ROOT / 'conf')}" for p in (ROOT / "conf").rglob("*.yaml")}
    modules = {str(p.relative_to(ROOT)) for package in ("cxrssl", "hydra_plugins")  # our Hydra sweeper plugin too
               for p in (ROOT / package).rglob("*.py")}
    assert configs and configs <= names, sorted(configs - names)
    assert modules <= names, f"missing from [tool.setuptools] packages: {sorted(modules - names)}"


def test_installed_wheel_composes_configs_from_elsewhere(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
                   check=True, timeout=300)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(target)}
    where = subprocess.run([sys.executable, "-c", "import cxrssl.cli as c; print(c.__file__); print(c.config_dir())"],
                           cwd=elsewhere, env=env, capture_output=True, text=True, check=True)
    assert where.stdout.splitlines()[0].startswith(str(target)) and str(target) in where.stdout.splitlines()[1]
    for command, override in (("pretrain", "pretext=recon"), ("finetune", "imbalance=focal"),
                              ("evaluate", "checkpoint=x.pt"), ("explain", "checkpoint=x.pt"),
                              ("predict", "checkpoint=x.pt"),
                              ("pretrain", "hparams_search=pretrain_optuna")):  # Hydra finds the wheel's sweeper plugin
        job = subprocess.run([sys.executable, "-m", "cxrssl", command, "--cfg", "job", override, "data=nih"],
                             cwd=elsewhere, env=env, capture_output=True, text=True, timeout=120)
        assert job.returncode == 0, job.stderr[-2000:]
        assert f"command: {command}" in job.stdout
