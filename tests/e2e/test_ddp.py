"""Data-parallel training with real gloo process groups on CPU (two ranks, one thread each).

Library level: each rank runs ``train_gan`` in its own process (``torch.multiprocessing.spawn``, joined
through a ``file://`` rendezvous) and saves its weights after ``K`` steps through the ``after_step`` hook.

Why the equality holds in ``EXACT``: DDP averages the ranks' gradients, and each rank's loss is a mean over
its half of the batch, so the averaged gradient is the gradient of the mean over the whole batch — exactly
what one process computes on the concatenated batch, provided every sample's output depends on that sample
alone. That rules out batch statistics: BatchNorm in G (``g_norm: none``) and in D (spectral norm on
instead; its power iteration reads the weights only, so it stays the same on every rank), and the minibatch
standard-deviation channel (its groups would straddle the ranks). The data (rank r takes its slice of each
global batch) and the noise (rank r takes its slice of one global draw) are the ones one process draws;
augmentation draws per rank, so it is off; R1 is a per-sample penalty averaged, so it stays on; the EMA
follows G. What remains is float summation order (an all-reduce of two halves vs one sum): <= 1e-5.
With the default nets (BatchNorm in G, mbstd in D) the ranks still agree exactly with each other, but not
with one process: each rank normalises over its own half.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from ganops.config import PLAIN_DCGAN, GanParams
from ganops.distributed import Place
from ganops.train_gan import Hooks, fit

pytestmark = pytest.mark.e2e

B, K = 8, 6  # per-rank batch; steps compared
BASE = PLAIN_DCGAN | dict(latent_dim=8, ngf=8, ndf=8, steps=K, sample_every=3, checkpoint_every=3,
                          log_every=1, grid_samples=4, loss="hinge", r1_gamma=1.0, r1_every=2, ema_decay=0.9)  # fmt: skip
EXACT = BASE | dict(g_norm="none", spectral_norm=True, mbstd=False)
DEFAULT = BASE | dict(g_norm="batch", spectral_norm=False, mbstd=True)


def _images() -> torch.Tensor:
    return torch.randint(
        0, 256, (64, 1, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )


def _nets_state(G: torch.nn.Module, D: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {f"G.{k}": v.detach().clone() for k, v in G.state_dict().items()} | {
        f"D.{k}": v.detach().clone() for k, v in D.state_dict().items()
    }


def _rank(rank: int, world: int, init: str, params: dict, tmp: str) -> None:
    """One rank: join the group, train, save this rank's weights after K steps and what it wrote."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        out = Path(tmp) / "out"

        def save(step: int, G: torch.nn.Module, D: torch.nn.Module) -> None:
            if step == K:
                torch.save(_nets_state(G, D), Path(tmp) / f"rank{rank}.pt")

        r = fit(_images(), GanParams(**params, batch_size=B), out, progress=False, place=Place(rank=rank, world_size=world), hooks=Hooks(after_step=save))  # fmt: skip
        torch.save(
            {"export": r.export is not None, "history": len(r.history)}, Path(tmp) / f"result{rank}.pt"
        )
    finally:
        dist.destroy_process_group()


def _two_ranks(tmp: Path, params: dict) -> tuple[dict, dict]:
    tmp.mkdir(parents=True)
    mp.spawn(_rank, args=(2, (tmp / "rendezvous").as_uri(), params, str(tmp)), nprocs=2, join=True)
    return torch.load(tmp / "rank0.pt"), torch.load(tmp / "rank1.pt")


def _one_process(tmp: Path, params: dict, at: int = K) -> dict:
    seen = {}

    def save(step: int, G: torch.nn.Module, D: torch.nn.Module) -> None:
        if step == at:
            seen.update(_nets_state(G, D))

    fit(_images(), GanParams(**params, batch_size=2 * B), tmp, progress=False, hooks=Hooks(after_step=save))
    return seen


def _max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a if a[k].is_floating_point())


def test_two_ranks_stay_identical_and_equal_one_process_on_the_whole_batch(tmp_path):
    r0, r1 = _two_ranks(tmp_path / "ddp", EXACT)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # parameters and buffers, bit for bit
    one = _one_process(tmp_path / "one", EXACT)
    start = _one_process(tmp_path / "zero", EXACT, at=1)  # after one step: the K steps moved them
    assert _max_diff(r0, one) <= 1e-5
    assert _max_diff(one, start) > 1e-3  # the comparison is about weights that trained
    # only rank 0 wrote: one checkpoint, grids, an export and a history; rank 1 none of them
    out = tmp_path / "ddp" / "out"
    assert (out / "checkpoint.pt").is_file() and (out / "final" / "generator.pt").is_file()
    assert torch.load(tmp_path / "ddp" / "result0.pt") == {"export": True, "history": K}
    assert torch.load(tmp_path / "ddp" / "result1.pt") == {"export": False, "history": 0}


def test_default_nets_stay_identical_across_ranks_but_differ_from_one_process(tmp_path):
    r0, r1 = _two_ranks(tmp_path / "ddp", DEFAULT)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)  # BatchNorm statistics averaged every step
    one = _one_process(tmp_path / "one", DEFAULT)
    # BatchNorm over 8 images per rank is not BatchNorm over 16: close, not equal (Adam moves each weight by
    # at most ~lr per step, so K steps bound the gap by about 2 K lr)
    params = [k for k in r0 if "running_" not in k and "num_batches" not in k]
    gap = _max_diff({k: r0[k] for k in params}, {k: one[k] for k in params})
    assert 1e-5 < gap <= 2 * K * GanParams().lr_d


FAST = BASE | dict(arch="fastgan", mbstd=False, r1_gamma=0.0)


def test_fastgan_on_two_ranks_stays_identical_and_resumes_mid_run_to_the_same_weights(tmp_path):
    # every block of G and D (decoders included) gets gradient each step, so plain DDP holds without
    # find_unused_parameters; the training noise and D's crop come from each rank's own global stream,
    # which the checkpoint carries per rank: stopping at step 3 and relaunching reaches the same weights
    r0, r1 = _two_ranks(tmp_path / "full", FAST)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    split = tmp_path / "split"
    for run, params in (("a", FAST | {"steps": 3}), ("b", FAST)):  # one output folder, launched twice
        (split / run).mkdir(parents=True)
        if run == "b":
            (split / "a" / "out").rename(split / "b" / "out")
        init = (split / run / "rendezvous").as_uri()
        mp.spawn(_rank, args=(2, init, params, str(split / run)), nprocs=2, join=True)
    resumed = torch.load(split / "b" / "rank0.pt")
    assert _max_diff(resumed, r0) == 0.0
    assert torch.load(split / "b" / "result0.pt")["history"] == K  # history carried over: it resumed


# 16 px, fade 3, stable 1: step 0 at 4 px, 1-3 fading to 8 px, 4 at 8 px, 5 fading to 16 px (four phases)
GROWING = BASE | dict(
    arch="progressive", mbstd=False, spectral_norm=True, grow_fade_steps=3, grow_stable_steps=1
)


def test_progressive_on_two_ranks_wraps_each_phase_equals_one_process_and_resumes_mid_fade(tmp_path):
    # each phase is wrapped on its own (the levels not yet grown and the faded-out path are outside DDP), so
    # plain DDP holds without find_unused_parameters; no batch statistics (pixel norm in G; spectral norm, not
    # BatchNorm, in D; mbstd off), so two ranks of 8 compute what one process of 16 does
    r0, r1 = _two_ranks(tmp_path / "full", GROWING)
    assert all(torch.equal(r0[k], r1[k]) for k in r0)
    assert r0["G.growth_state"].tolist() == [2.0, 0.0]  # the last step began the fade to 16 px
    assert _max_diff(r0, _one_process(tmp_path / "one", GROWING)) <= 1e-5
    split = tmp_path / "split"  # stopped after 3 steps, mid-fade (the next at alpha 2/3), relaunched
    for run, params in (("a", GROWING | {"steps": 3}), ("b", GROWING)):
        (split / run).mkdir(parents=True)
        if run == "b":
            (split / "a" / "out").rename(split / "b" / "out")
        mp.spawn(_rank, args=(2, (split / run / "rendezvous").as_uri(), params, str(split / run)), nprocs=2,
                 join=True)  # fmt: skip
    assert _max_diff(torch.load(split / "b" / "rank0.pt"), r0) == 0.0
    assert torch.load(split / "b" / "result0.pt")["history"] == K
