"""The machinery under serve's endpoints (policies in serve/app.py's docstring and the README's Serve
section):

- Batcher: one model thread with a bounded queue in front of it (full: 503), and its progress for /healthz;
- DecodeBudget: decodes are admitted against a budget of bytes in flight (each image's header gives its
  decode's peak memory, data/decode.decode_peak_bytes), waiting briefly for room, else 503 + Retry-After;
- RequestGate: ASGI middleware reading each body first (over the size limit: 413, slower than the body
  timeout: 408, both closing the connection at once), then admitting at most --max-connections requests
  being processed at once (503 + Retry-After), /healthz and /info exempt;
- IdleConnections + SlowClientH11Protocol: uvicorn's h11 protocol that also closes a connection whose
  request head has not arrived within the header timeout, and caps the connections that are idle or still
  sending (in all and per client address) by closing the longest-waiting one, so slow clients cannot
  hold the slots of the requests being processed.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor

import torch
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from ..data.transforms import stack_images

RETRY_AFTER_S = 1


def overloaded(detail: str) -> HTTPException:
    """503 with Retry-After: the server is shedding load; the same request later will likely succeed."""
    return HTTPException(503, detail, headers={"Retry-After": str(RETRY_AFTER_S)})


class Batcher:
    """Cross-request batching (policy in serve/app.py's docstring): one model thread, a queue in front of
    it."""

    def __init__(
        self,
        run_batch,
        max_batch: int,
        wait_ms: float,
        max_queue: int = 0,
        executor: ThreadPoolExecutor | None = None,
    ) -> None:
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
            raise overloaded(
                f"{self.queue.maxsize} images are already waiting for the model; retry shortly"
            ) from None
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
                probs = await loop.run_in_executor(
                    self.executor, self.run_batch, stack_images([t for t, _ in live])
                )
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
            raise HTTPException(
                413,
                f"{name}: decoding this image needs about {amount // 1_000_000} MB, above the "
                f"server's decode budget of {self.capacity // 1_000_000} MB",
            )
        async with self._changed:
            try:
                if self.in_use + amount > self.capacity:  # (wait_for with a 0 s timeout never runs its check)
                    await asyncio.wait_for(
                        self._changed.wait_for(lambda: self.in_use + amount <= self.capacity), self.wait_s
                    )
            except TimeoutError:
                raise overloaded(
                    f"{name}: the server is busy decoding other images "
                    f"({self.in_use // 1_000_000} of {self.capacity // 1_000_000} MB in use); "
                    f"retry shortly"
                ) from None
            self.in_use += amount

    async def release(self, amount: int) -> None:
        async with self._changed:
            self.in_use -= amount
            self._changed.notify_all()


class RequestGate:
    """ASGI middleware in front of every endpoint: the whole body is read first (over max_bytes: 413, not
    complete within timeout_s: 408; both close the connection at once, so the rest of an oversized upload is
    never read), and only then does the request count as being processed: at most max_in_flight such requests
    at once, beyond that 503 + Retry-After. Connections that are idle or still sending never count here
    (they have their own cap: IdleConnections), and the cheap `exempt` paths (/healthz, /info) never wait."""

    def __init__(
        self, app, max_bytes: int, timeout_s: float, max_in_flight: int, exempt: tuple[str, ...] = ()
    ) -> None:
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s
        self.max_in_flight, self.exempt, self.in_flight = max_in_flight, exempt, 0

    def _too_large(self) -> HTTPException:
        return HTTPException(
            413,
            f"request body is larger than the limit of {self.max_bytes} bytes",
            headers={"Connection": "close"},
        )

    async def _body(self, scope, receive) -> bytes | None:
        """The complete body (None: the client went away); HTTPException 413 or 408 as it arrives."""
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            raise self._too_large()
        loop = asyncio.get_running_loop()
        chunks, seen, deadline = [], 0, loop.time() + self.timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - loop.time()))
            except TimeoutError:
                raise HTTPException(
                    408,
                    f"request body not received within {self.timeout_s:g} s",
                    headers={"Connection": "close"},
                ) from None
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_bytes:
                raise self._too_large()
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        try:
            body = await self._body(scope, receive)
        except HTTPException as e:
            return await JSONResponse({"detail": e.detail}, e.status_code, headers=e.headers)(
                scope, receive, send
            )
        if body is None:
            return None
        counted = scope["path"] not in self.exempt
        if counted and self.in_flight >= self.max_in_flight:
            busy = overloaded(
                f"{self.in_flight} of at most {self.max_in_flight} requests are already being "
                f"processed (--max-connections); retry shortly"
            )
            return await JSONResponse({"detail": busy.detail}, 503, headers=busy.headers)(
                scope, receive, send
            )
        pending = [{"type": "http.request", "body": body, "more_body": False}]
        del body

        async def replay():
            return pending.pop() if pending else await receive()

        self.in_flight += counted
        try:
            await self.app(scope, replay, send)
        finally:
            self.in_flight -= counted


class IdleConnections:
    """The connections of one server process that are not being processed: idle keep-alive ones and those
    whose request head or body is still arriving. At most max_total of them, and max_per_client from one
    client address; past a cap the one waiting longest is closed (of the address holding the most), but never
    one waiting less than GRACE_S, so a new client always gets in and its request through, and slow clients
    only push each other out. Past twice max_total age gives no shelter, and connections that have never
    been answered go first (a slowloris client's never are; a kept-alive client's have been)."""

    GRACE_S = 1.0  # time a connection gets to send its request before it may be pushed out

    def __init__(self, max_total: int, max_per_client: int) -> None:
        self.max_total, self.max_per_client = max_total, max_per_client
        self.by_client: dict[str, dict] = {}  # address -> {connection: waiting since}, oldest first
        self.count = 0

    def waiting(self, conn) -> None:
        """conn is (again) idle or receiving: register it as the newest, then enforce the caps."""
        self.forget(conn)
        group = self.by_client.setdefault(conn.client[0] if conn.client else "", {})
        group[conn] = time.monotonic()
        self.count += 1
        while len(group) > self.max_per_client and self._evict(group, hard=False):
            pass
        while self.count > self.max_total and self._evict(
            max(self.by_client.values(), key=len), hard=self.count > 2 * self.max_total
        ):
            pass

    def forget(self, conn) -> None:
        """conn is being processed, or closed."""
        address = conn.client[0] if conn.client else ""
        group = self.by_client.get(address)
        if group is not None and group.pop(conn, None) is not None:
            self.count -= 1
            if not group:
                del self.by_client[address]

    def _evict(self, group: dict, hard: bool) -> bool:
        """Close the longest-waiting connection of group that has waited GRACE_S (hard: any, never answered
        first)."""
        now = time.monotonic()
        candidates = [
            conn for conn, since in group.items() if (hard or now - since >= self.GRACE_S) and not conn.busy
        ]
        if hard:
            candidates.sort(key=lambda conn: conn.answered)  # stable: the oldest never-answered one first
        if not candidates:
            return False
        self._close(candidates[0])
        return True

    def _close(self, conn) -> None:
        self.forget(conn)
        conn.close_idle()


class SlowClientH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with two more limits: a connection whose request head has not arrived within
    header_timeout_s of connecting or of its previous response is closed (uvicorn's keep-alive timer stops
    at the first byte received), and every connection not being processed is registered with `idle`
    (IdleConnections), which closes the longest-waiting ones past its caps. configure() sets both for the
    process before uvicorn starts."""

    header_timeout_s = 10.0
    idle = IdleConnections(64, 16)
    answered = False  # has this connection had a response yet

    @classmethod
    def configure(cls, header_timeout_s: float, max_idle: int, max_idle_per_client: int) -> None:
        cls.header_timeout_s, cls.idle = header_timeout_s, IdleConnections(max_idle, max_idle_per_client)

    @property
    def busy(self) -> bool:
        """A request has fully arrived and its response is not complete yet."""
        return self.cycle is not None and not self.cycle.more_body and not self.cycle.response_complete

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()
        self.idle.waiting(self)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.busy:
            self.idle.forget(self)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self.answered = True
        if not self.transport.is_closing():
            self._arm_header_timer()
            if not self.busy:  # (a pipelined request may already be complete)
                self.idle.waiting(self)

    def connection_lost(self, exc) -> None:
        self.idle.forget(self)
        super().connection_lost(exc)

    def close_idle(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()

    def _arm_header_timer(self) -> None:
        waiting_for = self.cycle  # a new request replaces the cycle; the timer then finds it changed
        self.loop.call_later(self.header_timeout_s, self._header_timeout, waiting_for)

    def _header_timeout(self, waiting_for) -> None:
        if self.cycle is waiting_for and not self.transport.is_closing():
            self.transport.close()
