"""Documented command behaviours: `pretrained=` forms, recon decoder reuse for the dual loss,
`resume=<path>` and its refusal, resume inside a sweep, SGD + Nesterov, `scheduler=none`,
per-step `train/lr` / `train/momentum` in MLflow, `trainer.channels_last`, `deterministic`."""
from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from cxrssl.commands.inprocess import compose_config, run_command
from cxrssl.engine.checkpoint import CheckpointError
from cxrssl.engine.optim import LRSchedule, build_optimizer
from cxrssl.models.loading import load_encoder
from tests.conftest import TINY

FAST = ["trainer.limit_batches=2"]
FROZEN = ["optimizer.lr=1e-12", "scheduler=none"]  # weights effectively unchanged by training


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    root = tmp_path_factory.mktemp("documented")
    return root, [*TINY, *FAST, f"mlflow.tracking_uri=sqlite:///{root}/mlflow.db"]


@pytest.fixture(scope="module")
def recon_run(store):
    root, base = store
    _, summary = run_command("pretrain", [*base, "pretext=recon"], run_dir=root / "recon")
    return root / "recon", summary


def _encoder_state(ckpt_path) -> dict:
    model = torch.load(ckpt_path, map_location="cpu", weights_only=True)["model"]
    return {k[len("encoder."):]: v for k, v in model.items() if k.startswith("encoder.")}


def test_pretrained_accepts_run_dir_checkpoint_weights_file_and_none(recon_run, tmp_path):
    run_dir, _ = recon_run
    backbone = {"name": "test_resnet", "pretrained": None, "timm_kwargs": {}}
    expected = _encoder_state(run_dir / "checkpoints" / "best.pt")
    from_dir, info_dir = load_encoder(backbone, str(run_dir))
    from_file, info_file = load_encoder(backbone, str(run_dir / "checkpoints" / "best.pt"))
    for encoder in (from_dir, from_file):
        got = encoder.state_dict()
        for key, value in expected.items():
            torch.testing.assert_close(got[key], value)
    assert info_dir["pretext"] == "recon" and info_dir["kind"] == "checkpoint" and "decoder_state" in info_dir

    plain = tmp_path / "plain.pth"
    torch.save(from_dir.net.state_dict(), plain)  # a plain (timm-style, 1-channel) weights file
    from_plain, info_plain = load_encoder(backbone, str(plain))
    assert info_plain["kind"] == "weights_file"
    torch.testing.assert_close(from_plain.net.state_dict()["layer4.0.conv1.weight"],
                               from_dir.net.state_dict()["layer4.0.conv1.weight"])

    random, info_random = load_encoder(backbone, "none")
    assert info_random["kind"] == "random"
    assert not torch.equal(random.net.state_dict()["layer4.0.conv1.weight"],
                           from_dir.net.state_dict()["layer4.0.conv1.weight"])


def test_dual_loss_reuses_the_recon_decoder(store, recon_run):
    root, base = store
    run_dir, _ = recon_run
    _, summary = run_command("finetune", [*base, *FROZEN, f"pretrained={run_dir}", "finetune.recon_weight=0.5"],
                             run_dir=root / "dual")
    assert summary["final"]["train/recon_loss"] >= 0
    recon = torch.load(run_dir / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)["model"]
    dual = torch.load(root / "dual" / "checkpoints" / "best.pt", map_location="cpu", weights_only=True)["model"]
    weights = [k for k in recon if k.startswith("decoder.") and k.endswith(".weight")]
    assert weights
    for key in weights:
        torch.testing.assert_close(dual[key], recon[key])


def test_resume_from_a_path_continues_and_a_foreign_checkpoint_is_refused(store, recon_run):
    root, base = store
    run_dir, first = recon_run
    last = run_dir / "checkpoints" / "last.pt"
    _, summary = run_command("pretrain", [*base, "pretext=recon", "trainer.max_epochs=2", f"resume={last}"],
                             run_dir=root / "continued")
    assert summary["epochs_completed"] == 2
    history = torch.load(root / "continued" / "checkpoints" / "last.pt", weights_only=True)["history"]
    assert len(history) == 2 and history[0]["val/loss"] == pytest.approx(first["final"]["val/loss"])
    with pytest.raises(CheckpointError, match="belongs to another run"):
        run_command("pretrain", [*base, "pretext=age", f"resume={last}"], run_dir=root / "foreign")


def test_resume_inside_a_sweep_resumes_only_the_job_itself(store):
    root, base = store
    sweep = root / "sweep"
    _, job0 = run_command("pretrain", [*base, "pretext=age"], run_dir=sweep / "0", sweep_dir=sweep, job_num=0)
    assert job0["epochs_completed"] == 1
    # job 1 never ran: resume=true must start it fresh, not continue job 0's checkpoint
    _, job1 = run_command("pretrain", [*base, "pretext=age", "resume=true", "trainer.max_epochs=1"],
                          run_dir=sweep / "1", sweep_dir=sweep, job_num=1)
    history = torch.load(sweep / "1" / "checkpoints" / "last.pt", weights_only=True)["history"]
    assert job1["epochs_completed"] == 1 and len(history) == 1
    _, again = run_command("pretrain", [*base, "pretext=age", "resume=true", "trainer.max_epochs=2"],
                           run_dir=sweep / "0", sweep_dir=sweep, job_num=0)
    assert again["epochs_completed"] == 2
    assert len(torch.load(sweep / "0" / "checkpoints" / "last.pt", weights_only=True)["history"]) == 2


def test_sgd_is_nesterov_and_scheduler_none_keeps_the_lr():
    cfg = compose_config("pretrain", ["optimizer=sgd", "scheduler=none"])
    params = [torch.nn.Parameter(torch.zeros(3))]
    opt = build_optimizer(OmegaConf.to_container(cfg.optimizer), [{"params": params}])
    assert isinstance(opt, torch.optim.SGD)
    assert opt.defaults["nesterov"] is True and opt.defaults["momentum"] == pytest.approx(0.9)
    schedule = LRSchedule(opt, OmegaConf.to_container(cfg.scheduler), steps_per_epoch=5, max_epochs=2)
    lrs = []
    for _ in range(10):
        params[0].grad = torch.ones(3)
        opt.step()
        schedule.step_batch()
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs == [pytest.approx(float(cfg.optimizer.lr))] * 10


def test_per_step_lr_and_momentum_reach_mlflow(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    _, summary = run_command("pretrain", [*TINY, "trainer.limit_batches=4", "trainer.log_every_n_steps=1",
                                          "optimizer=sgd", "scheduler=onecycle", f"mlflow.tracking_uri={uri}"],
                             run_dir=tmp_path / "run")
    client = MlflowClient(tracking_uri=uri)
    lr = client.get_metric_history(summary["mlflow_run_id"], "train/lr")
    momentum = client.get_metric_history(summary["mlflow_run_id"], "train/momentum")
    assert len({m.step for m in lr}) >= 4 and len({m.step for m in momentum}) >= 4
    assert len({round(m.value, 12) for m in lr}) >= 3  # one-cycle: the LR moves every step
    assert len({round(m.value, 6) for m in momentum}) >= 2  # and the momentum cycles against it


def test_channels_last_and_deterministic_runs(tmp_path):
    uri = [f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"]
    losses = []
    for name, extra in (("a", []), ("b", []), ("cl", ["trainer.channels_last=true"])):
        _, summary = run_command("pretrain", [*TINY, *FAST, *uri, "trainer.deterministic=true", *extra],
                                 run_dir=tmp_path / name)
        losses.append(summary["final"]["val/loss"])
    assert losses[0] == losses[1]  # deterministic: bit-identical reruns
    assert losses[2] == pytest.approx(losses[0], rel=1e-3)  # channels_last: same maths, other layout


@pytest.mark.slow
def test_compile_runs(tmp_path):
    _, summary = run_command("pretrain", [*TINY, *FAST, "trainer.compile=true",
                                          f"mlflow.tracking_uri=sqlite:///{tmp_path}/mlflow.db"], run_dir=tmp_path / "c")
    assert summary["epochs_completed"] == 1 and summary["final"]["val/loss"] > 0
