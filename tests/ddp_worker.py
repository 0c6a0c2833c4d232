"""One rank of tests/test_distributed.py, run under `torchrun --nproc_per_node=2` (gloo, CPU).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/ddp_worker.py MODE OUT_JSON [DIR]

MODE: grad | train (tests/test_distributed.py), samplers | syncbn | fit | resume | fail
(tests/test_distributed_finetune.py, helpers in tests/ddp_finetune_worker.py).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cxrssl.engine import distributed as D  # noqa: E402
from cxrssl.engine.seed import seed_everything  # noqa: E402
from cxrssl.models import create_encoder  # noqa: E402
from cxrssl.tasks.age import AgeTask  # noqa: E402
from tests.helpers import ToyCXR  # noqa: E402


def make_task(seed: int) -> AgeTask:
    seed_everything(seed)
    return AgeTask(create_encoder("test_resnet"), train_mean_age=55.0)


def flat_grad(task) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in task.parameters() if p.requires_grad])


def batch_of(data: ToyCXR, rows) -> dict:
    return {"image": data.images[rows], "age": data.age[rows]}


def grad_check(env: D.DistEnv) -> dict:
    task = make_task(seed=env.rank)  # different weights per rank on purpose ...
    D.broadcast_module(task)         # ... rank 0's everywhere after the broadcast
    task.eval()  # BatchNorm on running statistics: per-rank batch statistics are what SyncBatchNorm is for
    data = ToyCXR(n=8, size=32, seed=0)
    local = slice(env.rank * 4, (env.rank + 1) * 4)
    task.training_step(batch_of(data, local))["loss"].backward()
    D.average_gradients(task.parameters())
    grads = [torch.zeros_like(flat_grad(task)) for _ in range(env.world_size)]
    dist.all_gather(grads, flat_grad(task))
    reference = make_task(seed=0)
    reference.eval()
    reference.training_step(batch_of(data, slice(0, 8)))["loss"].backward()
    ref = flat_grad(reference)
    return {"max_abs_diff": (grads[0] - ref).abs().max().item(), "ref_max": ref.abs().max().item(),
            "ranks_equal": all(torch.equal(g, grads[0]) for g in grads)}


def train_check(env: D.DistEnv) -> dict:
    task = make_task(seed=env.rank)
    D.broadcast_module(task)
    opt = torch.optim.AdamW(task.parameters(), lr=1e-3)
    data = ToyCXR(n=30, size=32, seed=0)
    loader = torch.utils.data.DataLoader(data, batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(0))
    loader = D.shard_loader(loader, env)
    seen = []
    for epoch in range(2):
        loader.sampler.set_epoch(epoch)
        task.train()
        for batch in loader:
            seen.append([int(i[1:]) for i in batch["image_id"]]) if epoch == 0 else None
            loss = task.training_step(batch)["loss"]
            opt.zero_grad()
            loss.backward()
            D.average_gradients(task.parameters())
            torch.nn.utils.clip_grad_norm_(task.parameters(), 1.0)
            opt.step()
    D.broadcast_module(task)  # BatchNorm running statistics: rank 0's, as saved in checkpoints
    params = torch.cat([p.detach().reshape(-1) for p in task.parameters()])
    gathered = [torch.zeros_like(params) for _ in range(env.world_size)]
    dist.all_gather(gathered, params)
    all_seen = [None] * env.world_size
    dist.all_gather_object(all_seen, sum(seen, []))
    sums = D.all_reduce_sums({"n": torch.tensor(float(len(sum(seen, []))))})
    return {"params_equal": all(torch.equal(g, gathered[0]) for g in gathered),
            "param_change": (gathered[0] - torch.cat([p.detach().reshape(-1) for p in make_task(0).parameters()])
                             ).abs().max().item(),
            "seen": all_seen, "n_sum": sums["n"].item(), "run_dir": D.broadcast_object(f"run-of-rank-{env.rank}")}


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    env = D.init_from_env("cpu", timeout_s=120.0)  # a planted rank mismatch fails in 2 min, not 30
    assert env.enabled and dist.get_backend() == "gloo"
    if mode in ("grad", "train"):
        result = grad_check(env) if mode == "grad" else train_check(env)
    else:
        from tests import ddp_finetune_worker

        result = getattr(ddp_finetune_worker, f"{mode}_check")(env, *sys.argv[3:])
    if env.is_main:
        out.write_text(json.dumps(result))
    D.barrier()  # no rank tears the group down while another still uses it
    D.destroy()


if __name__ == "__main__":
    main()
