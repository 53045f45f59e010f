"""Bounded HTTP load on `resnetcls serve` (127.0.0.1 only): throughput, p50/p99 latency and error counts for
servers that differ in one policy, same model and same ordinary request mix (640x480 JPEGs; a fifth of the
requests malformed: not an image, no file, a decompression bomb, a body over the limit, a bad topk). Each
server runs --repeats times, interleaved, and the table shows medians; the run fails loudly on any 5xx or
dropped connection.

--compare admission (default): the admission limits lifted (a huge decode budget, queue, batch-pixel and
connection limit: the baseline) against the defaults; what the memory bound costs when load is ordinary.
--compare batching: cross-request batching off (--max-batch 1, the baseline) against on.
--compare slow-clients: the default server with no other clients (the baseline) against the same server while
2 x --max-connections slow connections from 127.0.0.1 (half trickle a request head, half a body; each
reopened as soon as the server closes it) are held for the length of the run; a normal client sends 30
requests (/predict then /healthz each); the table shows how many were answered, their latency, the growth of
the server's peak RSS, and how many bytes of an oversized chunked upload the server took past --max-body-mb
from a client that ignores the 413.

    python bench/serve_load.py            # 1,500 requests per server at concurrency 16, ResNet-18 at 128 px
    python bench/serve_load.py --quick    # 300 requests at concurrency 8, a small ResNet-18 at 64 px
    python bench/serve_load.py --quick --compare slow-clients
"""

from __future__ import annotations

import argparse
import io
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
from PIL import Image

SRC = Path(__file__).resolve().parents[1] / "src"
sys.path.insert(0, str(SRC))
from resnetcls.data.transforms import make_preprocess  # noqa: E402
from resnetcls.models import create_model  # noqa: E402
from resnetcls.records.envinfo import machine_line  # noqa: E402
from resnetcls.records.modelfile import save_model_dir  # noqa: E402

MAX_BODY = 2_000_000
MAX_PIXELS = 4_000_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(model: Path, log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "PYTHONPATH": f"{SRC}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "resnetcls",
            "serve",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--max-body-mb",
            str(MAX_BODY / 1e6),
            "--max-pixels",
            str(MAX_PIXELS),
            *extra,
        ],
        stdout=open(log, "w"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise SystemExit(f"server exited: {log.read_text()}")
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("server did not start in time")


def photo_like(i: int) -> bytes:
    """A JPEG of camera-ish size (640x480) with some structure, so decoding costs what it costs in real
    use."""
    img = Image.new("RGB", (16, 12), (i * 37 % 255, i * 91 % 255, 120)).resize((640, 480), Image.BICUBIC)
    buffer = io.BytesIO()
    img.save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def payloads(requests: int) -> list[tuple[str, dict, int]]:
    """(url suffix, httpx kwargs, expected status) for each request; every fifth one is malformed."""
    bomb = io.BytesIO()
    Image.new("L", (3000, 3000)).save(bomb, "PNG")
    bad = [
        ("/predict", {"content": b"\x89PNG not really"}, 415),
        ("/predict", {"files": {"other": ("a.txt", b"x")}}, 400),
        ("/predict", {"content": bomb.getvalue()}, 422),
        ("/predict", {"content": b"\0" * (MAX_BODY + 1)}, 413),
        ("/predict?topk=-1", {"content": photo_like(0)}, 422),
    ]
    good = [photo_like(i) for i in range(16)]
    out = []
    for i in range(requests):
        if i % 5 == 4:
            out.append(bad[(i // 5) % len(bad)])
        else:
            out.append(
                ("/predict?topk=3", {"files": {"file": (f"{i}.jpg", good[i % 16], "image/jpeg")}}, 200)
            )
    return out


def load(url: str, requests: int, concurrency: int) -> dict:
    jobs = payloads(requests)
    clients = [httpx.Client(base_url=url, timeout=60) for _ in range(concurrency)]

    def one(i: int):
        path, kwargs, expected = jobs[i]
        start = time.perf_counter()
        try:
            status = clients[i % concurrency].post(path, **kwargs).status_code
        except httpx.TransportError as e:
            status = f"dropped: {type(e).__name__}"
        return status, expected, time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - start
    health = httpx.get(url + "/healthz", timeout=10)
    for c in clients:
        c.close()
    ok = sorted(t for s, e, t in outcomes if s == 200)
    stats = health.json() if health.status_code == 200 else {}
    return {
        "req/s": requests / wall,
        "good img/s": len(ok) / wall,
        "p50": statistics.median(ok),
        "p99": ok[min(len(ok) - 1, int(0.99 * len(ok)))],
        "5xx": sum(isinstance(s, int) and s >= 500 for s, _, _ in outcomes),
        "dropped": sum(isinstance(s, str) for s, _, _ in outcomes),
        "wrong": sum(s != e for s, e, _ in outcomes),
        "healthy": health.status_code == 200,
        "batch": stats.get("images_run", 0) / max(1, stats.get("batches_run", 0)),
    }


NO_LIMITS = [
    "--max-decode-mb",
    "1000000",
    "--max-queue",
    "1000000",
    "--max-batch-pixels",
    "10000000000",
    "--max-connections",
    "100000",
]
COMPARISONS = {
    "admission": [("admission limits lifted (baseline)", NO_LIMITS), ("default admission limits", [])],
    "batching": [
        ("no cross-request batching (--max-batch 1)", ["--max-batch", "1"]),
        ("default batching (--max-batch 32)", []),
        ("batching + --batch-wait-ms 5", ["--batch-wait-ms", "5"]),
    ],
}


def run_servers(model: Path, tmp: str, configs: list, requests: int, concurrency: int, repeats: int) -> list:
    """[(name, [result per repeat])], the configs interleaved so drifting machine load hits each alike."""
    results = [(name, []) for name, _ in configs]
    for _ in range(repeats):
        for (_, extra), (_, runs) in zip(configs, results):
            proc, url = start_server(model, Path(tmp) / "server.log", *extra)
            try:
                load(url, min(requests, 50), concurrency)  # warm-up
                runs.append(load(url, requests, concurrency))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    return results


def median_of(runs: list[dict]) -> dict:
    return {
        key: statistics.median(r[key] for r in runs) if key != "healthy" else all(r[key] for r in runs)
        for key in runs[0]
    }


class SlowClients:
    """`count` connections to 127.0.0.1:port that never finish their request: half trickle a request head
    (slowloris), half a full head then a body one byte at a time. A connection the server closes is reopened
    at once; `evicted` counts those closed younger than the server's header timeout (header_timeout_s, less a
    second of slack: pushed out by the idle-connection caps, not timed out). Runs until the `with` block ends
    or max_s, whichever comes first."""

    def __init__(self, port: int, count: int, max_s: float = 120, header_timeout_s: float = 10.0) -> None:
        self.port, self.count, self.max_s, self.header_timeout_s = port, count, max_s, header_timeout_s
        self.evicted, self.opened = 0, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(30)

    def _open(self) -> tuple[socket.socket, float]:
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        head = b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        if self.opened % 2:
            head += b"Content-Type: image/jpeg\r\nContent-Length: 100000\r\n\r\n"
        s.sendall(head)
        s.setblocking(False)
        self.opened += 1
        return s, time.monotonic()

    def _run(self) -> None:
        conns: dict[socket.socket, float] = {}  # each connection and when it was opened
        end = time.monotonic() + self.max_s
        try:
            while not self._stop.is_set() and time.monotonic() < end:
                while len(conns) < self.count:
                    s, since = self._open()
                    conns[s] = since
                for s in select.select(list(conns), [], [], 0.1)[0]:
                    try:
                        closed = s.recv(65536) == b""
                    except OSError:
                        closed = True
                    if closed:
                        self.evicted += time.monotonic() - conns.pop(s) < self.header_timeout_s - 1
                        s.close()
                for s in conns:
                    try:
                        s.send(b"x")
                    except OSError:
                        pass  # closed by the server: seen as readable next round
        finally:
            for s in conns:
                s.close()


def rss_mb(pid: int, key: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024


def past_limit_bytes(port: int, max_body: int, cap: int = 256 * 2**20) -> int:
    """Body bytes a client ignoring the 413 gets into the server past max_body before it hangs up (at most
    cap)."""
    with socket.create_connection(("127.0.0.1", port), timeout=15) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
        s.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk, sent = b"10000\r\n" + b"\0" * 65536 + b"\r\n", 0
        while sent < cap:
            try:
                s.sendall(chunk)
            except OSError:
                break
            sent += 65536
        return sent - max_body


def normal_client(url: str, pid: int, slow: int) -> dict:
    """30 requests (/predict, then /healthz) from one client while `slow` slow connections are held."""
    image, codes, health, times = photo_like(1), [], [], []
    with httpx.Client(base_url=url, timeout=60) as client:
        client.post("/predict", content=image)
        before = rss_mb(pid, "VmHWM")
        with SlowClients(int(url.rsplit(":", 1)[1]), slow) as clients:
            time.sleep(2 if slow else 0)  # every slow connection open and waiting
            for _ in range(30):
                start = time.perf_counter()
                codes.append(client.post("/predict", content=image).status_code)
                times.append(time.perf_counter() - start)
                health.append(client.get("/healthz").status_code)
    times.sort()
    return {
        "ok": codes.count(200),
        "health": health.count(200),
        "p50": statistics.median(times),
        "p99": times[-1],
        "rss": rss_mb(pid, "VmHWM") - before,
        "opened": clients.opened,
    }


def slow_clients(model: Path, tmp: str, repeats: int, max_connections: int = 64) -> None:
    rows = {
        "no other clients (baseline)": 0,
        f"{2 * max_connections} slow connections held": 2 * max_connections,
    }
    runs = {name: [] for name in rows}
    past = []
    for _ in range(repeats):
        for name, slow in rows.items():
            proc, url = start_server(model, Path(tmp) / "server.log")
            try:
                runs[name].append(normal_client(url, proc.pid, slow))
                if slow:
                    past.append(past_limit_bytes(int(url.rsplit(":", 1)[1]), MAX_BODY))
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    results = {name: median_of(r) for name, r in runs.items()}
    base = results["no other clients (baseline)"]
    print(
        f"\n{'default server (--max-connections 64)':<40} {'200s':>6} {'healthz':>8} {'p50 ms':>7} {'x':>5} "
        f"{'p99 ms':>7} {'x':>5} {'RSS +MB':>8} {'slow opened':>12}"
    )
    for name, r in results.items():
        print(
            f"{name:<40} {r['ok']:>3.0f}/30 {r['health']:>5.0f}/30 {r['p50'] * 1000:>7.1f} "
            f"{r['p50'] / base['p50']:>5.2f} {r['p99'] * 1000:>7.1f} {r['p99'] / base['p99']:>5.2f} "
            f"{r['rss']:>8.1f} {r['opened']:>12.0f}"
        )
    print(
        f"\noversized chunked upload, the client ignoring the 413: {statistics.median(past) / 1e6:.2f} MB "
        f"sent past the {MAX_BODY / 1e6:g} MB limit before the server hung up (median of {len(past)}; at "
        "most 268 MB tried)"
    )
    print(
        "x = ratio to the first row; p99 = slowest of the 30; RSS = growth of the server's peak during "
        "the run"
    )
    if any(r["ok"] < 30 or r["health"] < 30 for r in results.values()):
        raise SystemExit("FAILED: a request or a health check was not answered with 200")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--requests", type=int)
    parser.add_argument("--concurrency", type=int)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compare", choices=[*COMPARISONS, "slow-clients"], default="admission")
    args = parser.parse_args()
    requests = args.requests or (300 if args.quick else 1500)
    concurrency = args.concurrency or (8 if args.quick else 16)
    size, width = (64, 16) if args.quick else (128, 64)
    with tempfile.TemporaryDirectory() as tmp:
        model = save_model_dir(
            Path(tmp) / "m",
            create_model("resnet18", 10, width=width),
            "resnet18",
            {"width": width},
            [f"c{i}" for i in range(10)],
            make_preprocess(size),
        )
        print(f"machine: {machine_line()}", flush=True)
        if args.compare == "slow-clients":
            print(
                f"ResNet-18 (width {width}) at {size} px; medians of {args.repeats} runs per row, interleaved"
            )
            return slow_clients(model, tmp, args.repeats)
        print(
            f"ResNet-18 (width {width}) at {size} px, "
            f"{requests} requests per server, concurrency {concurrency}, a fifth malformed; medians of "
            f"{args.repeats} runs per server, interleaved",
            flush=True,
        )
        raw = run_servers(model, tmp, COMPARISONS[args.compare], requests, concurrency, args.repeats)
    results = [(name, median_of(runs)) for name, runs in raw]
    base = results[0][1]
    print(
        f"\n{'server':<44} {'req/s':>7} {'img/s':>7} {'x':>5} {'p50 ms':>7} {'x':>5} {'p99 ms':>7} {'x':>5} "
        f"{'batch':>6} {'5xx':>4} {'drop':>5} {'wrong':>6} healthy"
    )
    for name, r in results:
        print(
            f"{name:<44} {r['req/s']:>7.1f} {r['good img/s']:>7.1f} "
            f"{r['good img/s'] / base['good img/s']:>5.2f} "
            f"{r['p50'] * 1000:>7.1f} {r['p50'] / base['p50']:>5.2f} "
            f"{r['p99'] * 1000:>7.1f} {r['p99'] / base['p99']:>5.2f} {r['batch']:>6.2f} {r['5xx']:>4.0f} "
            f"{r['dropped']:>5.0f} {r['wrong']:>6.0f} {r['healthy']}"
        )
    print(
        "\nlatency of the well-formed requests; x = ratio to the first row; batch = mean images per model "
        "call"
    )
    if any(r["5xx"] or r["dropped"] or r["wrong"] or not r["healthy"] for _, r in results):
        raise SystemExit("FAILED: a 5xx, a dropped connection, a wrong status or an unhealthy server")


if __name__ == "__main__":
    main()
