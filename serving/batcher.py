"""Adaptive batching inside the API process: the latents of concurrent requests go through one forward.

While one batch runs (in a dedicated thread, off the event loop), new requests queue; when it ends, all
that queued (up to ``max_batch`` images, same model only) form the next batch; a request of more than
``max_batch`` images is cut into several jobs, so no forward pass is ever larger. No timer: a lone request
runs at once, and under load batches grow by themselves to what one forward pass can absorb. Each
request's images are then encoded (PNG / JSON / npy) by its own ``encode`` in a second thread, so
encoding batch k overlaps the forward pass of batch k+1 on another core.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

Encode = Callable[[np.ndarray], bytes]  # (n, S, S, C) uint8 images -> response body


@dataclass
class _Job:
    G: torch.nn.Module
    z: np.ndarray  # (n, Z) float32
    encode: Encode
    done: asyncio.Future = field(repr=False)


def forward(G: torch.nn.Module, z: np.ndarray) -> np.ndarray:
    """(B, Z) float32 latents -> (B, S, S, C) uint8 images, on G's device (CUDA: bf16 autocast)."""
    device = next(G.parameters()).device
    cuda = device.type == "cuda"
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16, enabled=cuda):
        x = G(torch.from_numpy(z).to(device))  # (B, C, S, S) in [-1, 1]; eval mode: samples are independent
    x = x.float() if cuda else x
    return ((x + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


class Batcher:
    """``await batcher.run(G, z, encode)`` -> ``encode(G(z) as uint8 images)``, batched across callers."""

    def __init__(
        self, max_batch: int = 512, encode_threads: int = 2, on_batch: Callable[[int], None] | None = None
    ) -> None:
        self.max_batch, self.on_batch = max_batch, on_batch
        self._jobs: deque[_Job] = deque()
        self._wake: asyncio.Event | None = None  # made on the serving loop, at first use
        self._task: asyncio.Task | None = None
        self._forward = ThreadPoolExecutor(1, thread_name_prefix="ganops-forward")
        self._encode = ThreadPoolExecutor(encode_threads, thread_name_prefix="ganops-encode")

    async def run(self, G: torch.nn.Module, z: np.ndarray, encode: Encode) -> bytes:
        loop = asyncio.get_running_loop()
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = loop.create_task(self._dispatch())
        assert self._wake is not None
        # a request larger than one forward pass (GANOPS_MAX_N > GANOPS_MAX_BATCH) goes as several jobs of at
        # most max_batch latents each; its images are put back together and encoded as one answer
        jobs = [_Job(G, z[i : i + self.max_batch], encode, loop.create_future())
                for i in range(0, len(z), self.max_batch)]  # fmt: skip
        self._jobs.extend(jobs)
        self._wake.set()
        parts = await asyncio.gather(*(j.done for j in jobs))  # the client gone: gather cancels all its jobs
        images = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return await loop.run_in_executor(self._encode, encode, images)

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._wake is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._jobs:
                batch = [self._jobs.popleft()]
                size = len(batch[0].z)
                # same model only: after a champion switch, old requests finish on the old one
                while (
                    self._jobs
                    and self._jobs[0].G is batch[0].G
                    and size + len(self._jobs[0].z) <= self.max_batch
                ):
                    size += len(self._jobs[0].z)
                    batch.append(self._jobs.popleft())
                batch = [j for j in batch if not j.done.done()]  # a client that went away costs nothing
                if not batch:
                    continue
                try:
                    z = np.concatenate([j.z for j in batch])
                    images = await loop.run_in_executor(self._forward, forward, batch[0].G, z)
                except Exception as err:  # noqa: BLE001 - every waiting request gets the error, not a hang
                    for j in batch:
                        if not j.done.done():
                            j.done.set_exception(err)
                    continue
                if self.on_batch is not None:
                    self.on_batch(len(z))  # images per forward: the service's metric
                start = 0
                for j in batch:
                    if not j.done.done():
                        j.done.set_result(images[start : start + len(j.z)])
                    start += len(j.z)
