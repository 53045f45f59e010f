"""The machinery under serve's endpoints (policies in serve.py's docstring and the README's Serve section):

- Batcher: one model thread with a bounded queue in front of it (full: 503), and its progress for /healthz;
- DecodeBudget: decodes are admitted against a budget of bytes in flight (each image's header gives its
  decode's peak memory, data/decode.decode_peak_bytes), waiting briefly for room, else 503 + Retry-After;
- BodyLimit: ASGI middleware refusing bodies over the size limit (413) or slower than the body timeout (408);
- SlowClientH11Protocol: uvicorn's h11 protocol that also closes a connection whose request head has not
  arrived within the header timeout (uvicorn's own keep-alive timer stops at the first byte received).
"""
from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import torch

from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from .data.transforms import stack_images

RETRY_AFTER_S = 1


def overloaded(detail: str) -> HTTPException:
    """503 with Retry-After: the server is shedding load; the same request later will likely succeed."""
    return HTTPException(503, detail, headers={"Retry-After": str(RETRY_AFTER_S)})


class Batcher:
    """Cross-request batching (policy in serve.py's docstring): one model thread, a queue in front of it."""

    def __init__(self, run_batch, max_batch: int, wait_ms: float, max_queue: int = 0,
                 executor: ThreadPoolExecutor | None = None) -> None:
        """executor: the one-thread executor that runs the model (default: a new one)."""
        self.run_batch, self.max_batch, self.wait_s = run_batch, max(1, max_batch), max(0.0, wait_ms) / 1000
        self.queue: asyncio.Queue = asyncio.Queue(max_queue)  # 0: unbounded
        self.executor = executor or ThreadPoolExecutor(1, thread_name_prefix="model")
        self.task: asyncio.Task | None = None
        self.batches_run = self.images_run = 0  # their ratio is the mean batch size actually achieved
        self.busy_since: float | None = None  # monotonic start of the model call in progress

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self.task:
            self.task.cancel()
        self.executor.shutdown(wait=False)

    @property
    def alive(self) -> bool:
        return self.task is not None and not self.task.done()

    def stalled_s(self) -> float:
        """How long the model call in progress has run (0 when the model thread is idle)."""
        return 0.0 if self.busy_since is None else time.monotonic() - self.busy_since

    async def submit(self, tensor: torch.Tensor) -> torch.Tensor:
        """Probabilities for one preprocessed image; 503 when the queue is full."""
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((tensor, future))
        except asyncio.QueueFull:
            raise overloaded(f"{self.queue.maxsize} images are already waiting for the model; retry shortly") from None
        return await future

    async def _collect(self) -> list:
        items = [await self.queue.get()]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while len(items) < self.max_batch:
            if not self.queue.empty():
                items.append(self.queue.get_nowait())
                continue
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            try:
                items.append(await asyncio.wait_for(self.queue.get(), remaining))
            except TimeoutError:
                break
        return items

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = await self._collect()
            live = [(t, f) for t, f in items if not f.done()]  # callers that hung up need no answer
            if not live:
                continue
            self.busy_since = time.monotonic()
            try:
                probs = await loop.run_in_executor(self.executor, self.run_batch, stack_images([t for t, _ in live]))
            except Exception as e:  # noqa: BLE001 - every waiting caller must get an answer, never hang
                for _, future in live:
                    if not future.done():
                        future.set_exception(e)
                continue
            finally:
                self.busy_since = None
            self.batches_run += 1
            self.images_run += len(live)
            for row, (_, future) in zip(probs, live):
                if not future.done():
                    future.set_result(row)


class DecodeBudget:
    """Bytes of decode memory in flight, at most `capacity`; reserve() waits up to wait_s for room."""

    def __init__(self, capacity: int, wait_s: float) -> None:
        self.capacity, self.wait_s, self.in_use = capacity, wait_s, 0
        self._changed = asyncio.Condition()

    async def reserve(self, amount: int, name: str) -> None:
        """Take `amount` bytes of the budget or raise 503 (413 when it can never fit)."""
        if amount > self.capacity:
            raise HTTPException(413, f"{name}: decoding this image needs about {amount // 1_000_000} MB, above the "
                                     f"server's decode budget of {self.capacity // 1_000_000} MB")
        async with self._changed:
            try:
                if self.in_use + amount > self.capacity:  # (wait_for with a 0 s timeout never runs its check)
                    await asyncio.wait_for(self._changed.wait_for(lambda: self.in_use + amount <= self.capacity),
                                           self.wait_s)
            except TimeoutError:
                raise overloaded(f"{name}: the server is busy decoding other images "
                                 f"({self.in_use // 1_000_000} of {self.capacity // 1_000_000} MB in use); "
                                 f"retry shortly") from None
            self.in_use += amount

    async def release(self, amount: int) -> None:
        async with self._changed:
            self.in_use -= amount
            self._changed.notify_all()


class BodyLimit:
    """ASGI middleware: refuse bodies over max_bytes with 413, by Content-Length or while they stream in, and
    bodies not fully received within timeout_s with 408 (a slow or stalled upload holds memory and a slot)."""

    def __init__(self, app, max_bytes: int, timeout_s: float) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    def _too_large(self) -> HTTPException:
        return HTTPException(413, f"request body is larger than the limit of {self.max_bytes} bytes")

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            response = JSONResponse({"detail": self._too_large().detail}, 413, headers={"Connection": "close"})
            return await response(scope, receive, send)
        seen, loop = 0, asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s

        async def limited_receive():
            nonlocal seen
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise HTTPException(408, f"request body not received within {self.timeout_s:g} s",
                                    headers={"Connection": "close"}) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise self._too_large()  # handled by the app's exception handler as a JSON 413
            return message

        await self.app(scope, limited_receive, send)


class SlowClientH11Protocol(H11Protocol):
    """Closes connections that have not sent a complete request head within header_timeout_s of connecting
    or of their previous response (a slow-headers client would otherwise hold a connection for ever)."""

    header_timeout_s = 10.0  # set by serve() from --header-timeout-s before uvicorn starts

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        waiting_for = self.cycle  # a new request replaces the cycle; the timer then finds it changed
        self.loop.call_later(self.header_timeout_s, self._header_timeout, waiting_for)

    def _header_timeout(self, waiting_for) -> None:
        if self.cycle is waiting_for and not self.transport.is_closing():
            self.transport.close()
