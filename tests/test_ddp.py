"""Fine-tuning under torch.nn.parallel.DistributedDataParallel: 2 CPU processes (gloo), each distilling on its
own shard of the digits data with the Distiller, hint projections and pruning masks. The ranks start from
different random students and must end with bit-identical parameters, masks still zero."""
from __future__ import annotations

import datetime
import os
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

WORLD = 2
EPOCHS = 3


def mlp(hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))


def shard(split, rank: int, epoch: int, batch: int = 32):
    """This rank's batches: one shared permutation per epoch, every WORLD-th sample, equal counts per rank."""
    order = torch.randperm(split.y.shape[0], generator=torch.Generator().manual_seed(epoch))
    per_rank = split.y.shape[0] // WORLD
    idx = order[rank::WORLD][:per_rank]
    for start in range(0, per_rank, batch):
        sel = idx[start:start + batch]
        yield split.x[sel], split.y[sel]


def _worker(rank: int, init_file: str, teacher_state: dict, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD,
                            timeout=datetime.timedelta(seconds=120))
    try:
        from sparsecomp import datasets, prune
        from sparsecomp.distill import Distiller, FeatureHints

        train, test = datasets.digits()
        teacher = mlp(128)
        teacher.load_state_dict(teacher_state)
        torch.manual_seed(100 + rank)  # different students per rank: DDP must broadcast rank 0's
        student = nn.parallel.DistributedDataParallel(mlp(32))
        prune.magnitude(student.module, amount=0.6)  # after the broadcast: identical masks on every rank
        masks = {n: prune.get_mask(m).detach().clone() for n, m in student.module.named_modules()
                 if isinstance(m, nn.Linear)}
        hints = FeatureHints(student, teacher, {"module.1": "1"}, example_input=train.x[:4])
        opt = torch.optim.Adam([*student.parameters(), *hints.parameters()], lr=1e-2)
        epoch = [0]

        def data():
            epoch[0] += 1
            return shard(train, rank, epoch[0])

        history = Distiller(student, teacher, opt, T=4.0, alpha=0.8, hints=hints, hint_weight=0.05,
                            progress=False).fit(data, epochs=EPOCHS)
        hints.remove()
        # every rank reports its parameters, masks and held-out accuracy through plain .npy files
        flat = torch.cat([p.detach().flatten() for p in [*student.module.parameters(), *hints.parameters()]])
        np.save(os.path.join(out_dir, f"params{rank}.npy"), flat.numpy())
        zeros_kept = all(bool((student.module.get_submodule(n).weight.detach()[m == 0] == 0).all())
                         for n, m in masks.items())
        with torch.no_grad():
            acc = (student.module(test.x).argmax(1) == test.y).float().mean().item()
        np.save(os.path.join(out_dir, f"stats{rank}.npy"),
                np.array([acc, float(zeros_kept), history[-1]["loss"], history[0]["loss"],
                          sum(int((m == 0).sum()) for m in masks.values())]))
    finally:
        dist.destroy_process_group()


def train_teacher() -> dict:
    from sparsecomp import datasets

    train, _ = datasets.digits()
    torch.manual_seed(0)
    teacher = mlp(128)
    opt = torch.optim.Adam(teacher.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(10):
        for x, y in train.batches(64, generator=g):
            opt.zero_grad()
            F.cross_entropy(teacher(x), y).backward()
            opt.step()
    return teacher.state_dict()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="torch built without gloo")
def test_distillation_and_pruning_under_ddp(tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        teacher_state = train_teacher()
    finally:
        torch.set_num_threads(threads)
    ctx = mp.start_processes(_worker, args=(str(tmp_path / "rendezvous"), teacher_state, str(tmp_path)),
                             nprocs=WORLD, join=False, start_method="spawn")
    deadline = time.monotonic() + 240
    try:
        while not ctx.join(timeout=5):
            if time.monotonic() > deadline:
                raise TimeoutError("DDP workers did not finish in 240 s")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()  # only the workers this test started
    params = [np.load(tmp_path / f"params{r}.npy") for r in range(WORLD)]
    stats = [np.load(tmp_path / f"stats{r}.npy") for r in range(WORLD)]
    assert params[0].shape == params[1].shape
    assert np.array_equal(params[0].view(np.int32), params[1].view(np.int32)), \
        f"ranks diverged: max |diff| {np.abs(params[0] - params[1]).max()}"
    for r, (acc, zeros_kept, last, first, pruned) in enumerate(stats):
        assert zeros_kept == 1.0, f"rank {r}: pruned weights moved under DDP"
        assert pruned == round(0.6 * (64 * 32 + 32 * 10)), pruned
        assert last < first, (r, first, last)
        assert acc > 0.85, f"rank {r}: accuracy {acc}"
