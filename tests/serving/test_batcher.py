"""The batcher: requests merge into forward passes of at most ``max_batch`` images, and one request larger
than that (GANOPS_MAX_N above GANOPS_MAX_BATCH) is cut into several, its images in order."""

from __future__ import annotations

import asyncio

import numpy as np
import torch
from serving.batcher import Batcher, forward

from ganops.models.dcgan import Generator
from ganops.models.gan import GANConfig


def _G() -> torch.nn.Module:
    torch.manual_seed(0)
    return Generator(GANConfig(latent_dim=8, ngf=4, image_size=16, channels=1)).eval()


def test_an_oversized_request_is_split_into_allowed_batches_in_order():
    G, sizes = _G(), []
    z = np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)

    async def go() -> bytes:
        b = Batcher(max_batch=4, on_batch=sizes.append)
        return await b.run(G, z, lambda images: images.tobytes())

    out = np.frombuffer(asyncio.run(go()), dtype=np.uint8).reshape(10, 16, 16, 1)
    assert sizes == [4, 4, 2]  # never more than max_batch per forward pass
    assert np.array_equal(out, forward(G, z))  # eval mode: each sample is independent of its batch


def test_concurrent_requests_merge_up_to_max_batch():
    G, sizes = _G(), []
    rng = np.random.default_rng(1)
    zs = [rng.standard_normal((n, 8)).astype(np.float32) for n in (1, 2, 3, 5, 1)]

    async def go() -> list[bytes]:
        b = Batcher(max_batch=4, on_batch=sizes.append)
        return await asyncio.gather(*(b.run(G, z, lambda images: images.tobytes()) for z in zs))

    outs = asyncio.run(go())
    assert max(sizes) <= 4 and sum(sizes) == 12
    for z, out in zip(zs, outs, strict=True):
        assert np.array_equal(np.frombuffer(out, dtype=np.uint8).reshape(len(z), 16, 16, 1), forward(G, z))
