"""User mistakes end in one clean line and exit status 2; bugs keep their traceback (issue 8 items 4, 11).

Each case runs the real console script in a subprocess, as a user would, and checks: exit code 2,
`cxrssl <command>: error:` on stderr naming the key or file, and no `Traceback`.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tests.data.conftest import make_csv_dataset

FAST = ["backbone=tiny", "data.image_size=32", "data.num_workers=0", "data.batch_size=4", "trainer.max_epochs=1",
        "trainer.progress=false", "mlflow.enabled=false"]
CKPT = ["data.num_workers=0", "mlflow.enabled=false"]  # evaluate/explain/predict: no backbone group


def cxrssl(*args: str, cwd: Path, env_extra: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    env.pop("HYDRA_FULL_ERROR", None)
    env.update(env_extra or {})
    exe = Path(sys.executable).with_name("cxrssl")
    return subprocess.run([str(exe), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _bad_rows(tmp: Path) -> tuple[list[str], list[str]]:
    csv = make_csv_dataset(tmp / "ds", n_patients=4)
    text = csv.read_text().splitlines()
    text[2] = text[2].replace(",M,", ",Z,").replace(",F,", ",Z,")  # CSV row 3: impossible sex
    csv.write_text("\n".join(text) + "\n")
    return ["pretrain", "data=csv", f"data.root={tmp / 'ds'}", *FAST], ["metadata.csv", "sex"]


def _unreadable_image(tmp: Path) -> tuple[list[str], list[str]]:
    make_csv_dataset(tmp / "ds", n_patients=4)
    png = tmp / "ds" / "images" / "p001_0.png"
    png.write_bytes(png.read_bytes()[:40])  # truncated: no IEND chunk
    return ["pretrain", "data=csv", f"data.root={tmp / 'ds'}", *FAST], ["p001_0.png"]


def _missing_root(tmp: Path) -> tuple[list[str], list[str]]:
    return ["pretrain", "data=nih", *FAST], ["data.root", "data=nih"]


def _root_not_a_folder(tmp: Path) -> tuple[list[str], list[str]]:
    return ["finetune", "data=chexpert", f"data.root={tmp / 'nowhere'}", *FAST], ["data.root", "nowhere"]


def _user_folder_as_synthetic_root(tmp: Path) -> tuple[list[str], list[str]]:
    make_csv_dataset(tmp / "mine", n_patients=2)
    return ["pretrain", f"data.root={tmp / 'mine'}", *FAST], ["data=csv", "mine"]


def _wrong_checkpoint_kind(tmp: Path) -> tuple[list[str], list[str]]:
    from cxrssl.engine.checkpoint import save_checkpoint

    path = save_checkpoint({"model": {}, "meta": {"command": "pretrain", "pretext": "age", "backbone": "test_resnet"}},
                           tmp / "pre.pt")
    return ["evaluate", f"checkpoint={path}", *CKPT], ["pre.pt", "pretrain checkpoint", "finetune"]


def _backbone_mismatch(tmp: Path) -> tuple[list[str], list[str]]:
    from cxrssl.engine.checkpoint import save_checkpoint

    path = save_checkpoint({"model": {"encoder.w": torch.zeros(1)}, "meta": {"command": "pretrain", "backbone": "resnet50"}},
                           tmp / "r50.pt")
    return ["finetune", f"pretrained={path}", *FAST], ["r50.pt", "resnet50", "backbone="]


def _corrupt_checkpoint(tmp: Path) -> tuple[list[str], list[str]]:
    (tmp / "broken.pt").write_bytes(b"PK\x03\x04 not really a zip")
    return ["evaluate", f"checkpoint={tmp / 'broken.pt'}", *CKPT], ["broken.pt"]


def _unreachable_server(tmp: Path) -> tuple[list[str], list[str]]:
    uri = f"http://127.0.0.1:{free_port()}"
    args = ["pretrain", *FAST[:-1], f"mlflow.tracking_uri={uri}", "mlflow.connect_timeout_s=2"]
    return args, [uri, "not reachable", "mlflow.enabled=false"]


def _cuda_without_gpu(tmp: Path) -> tuple[list[str], list[str]]:
    return ["pretrain", *FAST, "trainer.device=cuda"], ["trainer.device=cuda", "CUDA is not available"]


def _non_positive_lr(tmp: Path) -> tuple[list[str], list[str]]:
    return ["pretrain", *FAST, "optimizer.lr=0"], ["optimizer.lr", "> 0"]


def _label_fraction(tmp: Path) -> tuple[list[str], list[str]]:
    return ["finetune", *FAST, "data.label_fraction=1.5"], ["data.label_fraction", "(0, 1]"]


def _small_image(tmp: Path) -> tuple[list[str], list[str]]:
    return ["pretrain", *FAST, "data.image_size=16"], ["data.image_size", ">= 32"]


def _zero_batch(tmp: Path) -> tuple[list[str], list[str]]:
    return ["pretrain", *FAST, "data.batch_size=0"], ["data.batch_size", ">= 1"]


def _predict_inputs_missing(tmp: Path) -> tuple[list[str], list[str]]:
    return ["predict", "checkpoint=whatever.pt", f"inputs={tmp / 'none'}", *CKPT], ["whatever.pt"]


def _unknown_option(tmp: Path) -> tuple[list[str], list[str]]:
    return ["pretrain", "backbone=resnet9000", "mlflow.enabled=false"], ["backbone/resnet9000", "densenet121"]


def _unknown_key(tmp: Path) -> tuple[list[str], list[str]]:
    return ["finetune", "trainer.nosuchkey=1", "mlflow.enabled=false"], ["trainer.nosuchkey", "+trainer.nosuchkey=1"]


CASES = {
    "bad_rows": _bad_rows, "unreadable_image": _unreadable_image, "missing_root": _missing_root,
    "root_not_a_folder": _root_not_a_folder, "user_folder_as_synthetic_root": _user_folder_as_synthetic_root,
    "wrong_checkpoint_kind": _wrong_checkpoint_kind, "backbone_mismatch": _backbone_mismatch,
    "corrupt_checkpoint": _corrupt_checkpoint, "unreachable_server": _unreachable_server,
    "cuda_without_gpu": _cuda_without_gpu, "non_positive_lr": _non_positive_lr,
    "label_fraction": _label_fraction, "small_image": _small_image, "zero_batch": _zero_batch,
    "predict_missing_checkpoint": _predict_inputs_missing,
    "unknown_option": _unknown_option, "unknown_key": _unknown_key,  # Hydra's composition errors
}
#: Checked before any work (config checks): no run output may exist afterwards.
EARLY = {"unknown_option", "unknown_key", "missing_root", "root_not_a_folder", "cuda_without_gpu", "non_positive_lr", "label_fraction",
         "small_image", "zero_batch"}
#: In the default suite (the issue asks for at least 8); the rest run with the slow tests.
DEFAULT = {"bad_rows", "unreadable_image", "missing_root", "wrong_checkpoint_kind", "backbone_mismatch",
           "unreachable_server", "cuda_without_gpu", "non_positive_lr", "user_folder_as_synthetic_root",
           "unknown_option"}


@pytest.mark.parametrize("case", [c if c in DEFAULT else pytest.param(c, marks=pytest.mark.slow) for c in sorted(CASES)])
def test_user_mistake_is_one_line_and_exit_2(case, tmp_path):
    if case == "cuda_without_gpu" and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args, named = CASES[case](tmp_path)
    out = cxrssl(*args, f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path)
    assert out.returncode == 2, f"exit {out.returncode}\n{out.stderr[-3000:]}"
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.startswith(f"cxrssl {args[0]}: error: ")]
    assert len(lines) == 1, out.stderr[-3000:]
    message = out.stderr[out.stderr.index(lines[0]):]
    for word in named:
        assert word in message, f"{word!r} not in {message!r}"
    if case in EARLY:  # stopped by the config checks: no data was read, no tracking run opened
        assert not (tmp_path / "run" / "splits.csv").exists() and not (tmp_path / "mlflow.db").exists()


def test_full_error_env_shows_the_traceback(tmp_path):
    out = cxrssl("pretrain", *FAST, "optimizer.lr=-1", f"hydra.run.dir={tmp_path / 'run'}", cwd=tmp_path,
                 env_extra={"HYDRA_FULL_ERROR": "1"})
    assert out.returncode != 0 and "Traceback" in out.stderr and "ConfigError" in out.stderr
    assert "optimizer.lr" in out.stderr


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch, capsys):
    """Not a UserError: Hydra's traceback and its exit status 1, not our one-liner."""
    import cxrssl.commands.pretrain as pretrain
    from cxrssl.cli import main

    def broken(cfg):
        return {}["no such key"]

    monkeypatch.setattr(pretrain, "run", broken)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        main(["pretrain", "mlflow.enabled=false", f"hydra.run.dir={tmp_path / 'run'}"])
    err = capsys.readouterr().err
    assert stop.value.code == 1
    assert "Traceback" in err and "KeyError" in err and "error:" not in err.split("\n")[0]


def test_user_error_in_process_returns_2(tmp_path, monkeypatch, capsys):
    from cxrssl.cli import main

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert main(["finetune", *FAST, "data.val_fraction=0.6", "data.test_fraction=0.5",
                 f"hydra.run.dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cxrssl finetune: error: data.val_fraction + data.test_fraction") and "Traceback" not in err


def test_config_checks_take_well_under_a_second():
    from cxrssl.commands.inprocess import compose_config
    from cxrssl.commands.validation import check_config
    from cxrssl.errors import ConfigError

    cfg = compose_config("finetune", ["optimizer.lr=0"])
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"optimizer\.lr=0"):
        check_config(cfg)
    assert time.perf_counter() - start < 1.0
    check_config(compose_config("finetune", []))  # the shipped defaults pass
    with pytest.raises(ConfigError, match=r"evaluate\.threshold='youdn'.*valid rules"):
        check_config(compose_config("finetune", ["evaluate.threshold=youdn"]))
    with pytest.raises(ConfigError, match=r"trainer\.cudnn_benchmark='no'.*true or false"):
        check_config(compose_config("pretrain", ["trainer.cudnn_benchmark=no"]))
    with pytest.raises(ConfigError, match=r"trainer\.profile_steps=-1"):
        check_config(compose_config("pretrain", ["trainer.profile_steps=-1"]))
    with pytest.raises(ConfigError, match=r"lr_finder\.num_steps=4.*>= 8"):
        check_config(compose_config("pretrain", ["lr_finder.num_steps=4"]))
    with pytest.raises(ConfigError, match=r"lr_finder\.end_lr=1e-08.*above lr_finder\.start_lr"):
        check_config(compose_config("pretrain", ["lr_finder.end_lr=1e-8"]))
    with pytest.raises(ConfigError, match=r"predict\.threshold"):
        check_config(compose_config("predict", ["checkpoint=x", "inputs=y", "predict.threshold=1.5"]))
    for command in ("pretrain", "evaluate", "explain", "predict"):
        overrides = {"evaluate": ["checkpoint=x"], "explain": ["checkpoint=x"],
                     "predict": ["checkpoint=x", "inputs=y"]}.get(command, [])
        check_config(compose_config(command, overrides))


def test_failed_run_is_marked_failed_with_error_tag(tmp_path, monkeypatch):
    """A run that fails after tracking started ends FAILED in MLflow with the one-line reason."""
    from mlflow import MlflowClient

    from cxrssl.commands.inprocess import run_command
    from cxrssl.data.schema import MetadataError

    monkeypatch.chdir(tmp_path)
    csv = make_csv_dataset(tmp_path / "ds", n_patients=4)
    csv.write_text(csv.read_text().replace(",M,", ",Q,", 1))
    db = tmp_path / "mlflow.db"
    with pytest.raises(MetadataError):
        run_command("pretrain", ["data=csv", f"data.root={tmp_path / 'ds'}", *FAST[:-1],
                                 f"mlflow.tracking_uri=sqlite:///{db}"], run_dir=tmp_path / "run")
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("cxrssl").experiment_id])
    assert run.info.status == "FAILED"
    assert run.data.tags["error"].startswith("MetadataError: ") and "sex" in run.data.tags["error"]
    assert "\n" not in run.data.tags["error"]


def test_error_from_a_dataloader_worker_stays_a_user_error():
    """torch re-raises a worker's exception as `type(message_with_traceback)`: ImageReadError must
    survive that (else RuntimeError: a traceback for a user error) and print as one line."""
    import sys as _sys

    from torch._utils import ExceptionWrapper

    from cxrssl.cli import format_user_error
    from cxrssl.data.io import ImageReadError
    from cxrssl.errors import UserError

    try:
        raise ImageReadError("/data/x.png", "truncated PNG (no IEND chunk)")
    except ImageReadError:
        wrapper = ExceptionWrapper(_sys.exc_info(), where="in DataLoader worker process 0")
    with pytest.raises(UserError) as caught:
        wrapper.reraise()
    line = format_user_error("finetune", caught.value)
    assert line == "cxrssl finetune: error: cannot read image /data/x.png: truncated PNG (no IEND chunk)"
