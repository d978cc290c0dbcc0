"""Dynamic batching: images from requests that arrive together are scored in one call of the model.

A request's images join one bounded queue; a single worker takes the first waiting image,
then whatever else arrives within ``max_wait_s`` (at most ``max_batch`` images), and scores
them in one call on its own thread, so the event loop keeps accepting requests meanwhile.
A request whose images would not fit in the queue is refused at once (``Overloaded``): an
overloaded server answers 503 rather than holding an unbounded backlog in memory.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


class Overloaded(RuntimeError):
    """The queue has no room for a request's images; the message says how full it is."""


@dataclass(frozen=True)
class Item:
    """One prepared image waiting to be scored, and whether its Grad-CAM map is wanted."""

    pixels: np.ndarray
    gradcam: bool = False


@dataclass(frozen=True)
class Scored:
    """What the model gave for one image: P(positive class) (one per class past two), and its Grad-CAM map when asked for."""

    prob: float | tuple[float, ...]
    heatmap: np.ndarray | None = None


def batch_buckets(max_batch: int) -> tuple[int, ...]:
    """The batch sizes the model is called with: powers of two below ``max_batch``, then ``max_batch``.

    Each distinct batch size is a separate compilation of the exported function; a batch of
    any other size is scored as a few calls of these (``bucket_split``), so all of them can
    be compiled at start-up.
    """
    sizes, n = [], 1
    while n < max_batch:
        sizes.append(n)
        n *= 2
    return (*sizes, max_batch)


class Batcher:
    """Collects ``Item``s from concurrent requests and scores them in batches with ``score``.

    ``score(items) -> list[Scored]`` runs on one worker thread, one batch at a time.
    """

    def __init__(
        self,
        score: Callable[[Sequence[Item]], list[Scored]],
        max_batch: int = 16,
        max_wait_s: float = 0.005,
        max_queue: int = 256,
    ):
        if max_batch < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError(f"max_batch={max_batch}, max_queue={max_queue}: expected >= 1; max_wait_s >= 0")
        self._score = score
        self.max_batch, self.max_wait_s, self.max_queue = max_batch, max_wait_s, max_queue
        self._queue: asyncio.Queue | None = None
        self._worker: asyncio.Task | None = None
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="effnet-serve-batch")
        self.waiting = 0  # images queued, not yet taken into a batch
        self.batches = 0  # calls of ``score`` so far
        self.images = 0  # images scored so far

    async def start(self) -> None:
        """Starts the worker on the running event loop."""
        self._queue = asyncio.Queue()
        self._worker = asyncio.create_task(self._run(), name="effnet-serve-batcher")

    async def stop(self) -> None:
        """Stops the worker; images still waiting get ``Overloaded``."""
        if self._worker is not None:
            self._worker.cancel()
            try:
                await self._worker
            except asyncio.CancelledError:
                pass
        while self._queue is not None and not self._queue.empty():
            _, future = self._queue.get_nowait()
            if not future.done():
                future.set_exception(Overloaded("the server is shutting down"))
        self._thread.shutdown(wait=True)

    def submit(self, items: Sequence[Item]) -> list[asyncio.Future]:
        """Queues a request's images together (all or none); one future per image, resolving to ``Scored``."""
        if self._queue is None:
            raise RuntimeError("Batcher.start() was not called")
        if self.waiting + len(items) > self.max_queue:
            raise Overloaded(
                f"{self.waiting} image(s) already waiting, room for {self.max_queue}; "
                f"this request brings {len(items)}: try again shortly"
            )
        loop = asyncio.get_running_loop()
        futures = []
        for item in items:
            future = loop.create_future()
            self._queue.put_nowait((item, future))
            futures.append(future)
        self.waiting += len(items)
        return futures

    async def _next_batch(self) -> list:
        batch = [await self._queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.max_wait_s
        while len(batch) < self.max_batch:
            if not self._queue.empty():
                batch.append(self._queue.get_nowait())
                continue
            left = deadline - loop.time()
            if left <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), left))
            except asyncio.TimeoutError:
                break
        self.waiting -= len(batch)
        return batch

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            # A client that went away leaves a cancelled future: its image is not scored.
            live = [(item, future) for item, future in batch if not future.done()]
            if not live:
                continue
            try:
                scored = await loop.run_in_executor(self._thread, self._score, [item for item, _ in live])
            except Exception as e:  # the model failed on this batch: each of its requests hears why
                for _, future in live:
                    if not future.done():
                        future.set_exception(e)
                continue
            self.batches += 1
            self.images += len(live)
            for (_, future), result in zip(live, scored):
                if not future.done():
                    future.set_result(result)


def bucket_split(n: int, buckets: Sequence[int]) -> list[int]:
    """``n`` images as consecutive calls of bucket sizes, largest first (7 over 1, 2, 4, 8 -> 4, 2, 1).

    Splitting rather than padding up to the next size: no call computes images nobody sent.
    """
    sizes, left = [], n
    while left > 0:
        size = max((b for b in buckets if b <= left), default=left)
        sizes.append(size)
        left -= size
    return sizes


def bucketed_scorer(model, buckets: Sequence[int]) -> Callable[[Sequence[Item]], list[Scored]]:
    """``score(items)`` for ``Batcher`` running an exported model in calls of bucket sizes only."""

    def in_buckets(fn, pixels: np.ndarray) -> np.ndarray:
        out, start = [], 0
        for size in bucket_split(len(pixels), buckets):
            out.append(fn(pixels[start : start + size]))
            start += size
        return np.concatenate(out)

    def score(items: Sequence[Item]) -> list[Scored]:
        pixels = np.stack([item.pixels for item in items])
        probs = in_buckets(model.run, pixels)
        wanted = [i for i, item in enumerate(items) if item.gradcam]
        maps = dict(zip(wanted, in_buckets(model.gradcam, pixels[wanted]))) if wanted else {}
        prob = (lambda p: float(p)) if probs.ndim == 1 else (lambda p: tuple(float(v) for v in p))
        return [Scored(prob(probs[i]), maps.get(i)) for i in range(len(items))]

    return score


def warm_up(model, buckets: Sequence[int], gradcam: bool = False) -> None:
    """Compiles the model (and its Grad-CAM function) for every bucket size before the first request."""
    for size in buckets:
        zeros = np.zeros((size, model.image_size, model.image_size), np.uint8)
        model.run(zeros)
        if gradcam:
            model.gradcam(zeros)
