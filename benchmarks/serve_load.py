"""Load test of `perturbprobe serve`: throughput, latency and exactness under concurrency.

Starts the server on a free loopback port (the bundle `make demo` saves, the default LLM),
then for each number of concurrent clients (default 1, 8, 32, 64) runs that many threads, each
with its own keep-alive connection sending its share of the level's pairs (one pair per
request by default) one request after another, and prints a table: pairs/s, p50/p95/p99
latency, mean extraction batch size (from /metrics), errors, lost and duplicated results.
Then an overload burst (48 requests of 8 pairs at once) against a second server with a queue
of 32 pairs: every answer must be 200 or 503 with Retry-After and a `queue_full` body, and the
server still ready. Both servers are stopped with SIGTERM (exit code 0 expected). After that
the same pairs are scored offline with one `Scorer.score` call, and every served confidence is
compared with its offline value (a pair's confidence moves with its batch by float32 rounding:
up to ~1e-3 on the default LLM, hence the tolerance).

Targets (issue 12): throughput at 32 clients >= 80 % of offline batched scoring; zero lost,
duplicated or mismatched results; overload answers 503, never a crash. Exit status 1 when
a result is lost, duplicated or mismatched, or a server misbehaves or exits non-zero (the
throughput target is reported, not enforced).

    python benchmarks/serve_load.py [--bundle models/smollm2-135m-instruct/auto]
        [--model default] [--clients 1,8,32,64] [--pairs-per-level 128]
        [--pairs-per-request 1] [--max-batch 32] [--max-wait-ms 50] [--max-queue 256]
        [--batch-size 8] [--tolerance 2e-3] [--skip-overload] [--timeout 1800]
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from perturbprobe.bundles import Scorer
from perturbprobe.data import load_dataset

HTTP_TIMEOUT = 300.0  # seconds, every HTTP call
READY_TIMEOUT = 180.0  # seconds for a server to load its LLM and bundle
STOP_TIMEOUT = 30.0  # seconds a server may take to drain after SIGTERM before it is killed
OVERLOAD_REQUESTS, OVERLOAD_PAIRS, OVERLOAD_QUEUE = 48, 8, 32
HTTP_ERRORS = (OSError, http.client.HTTPException)
LIVE: list[subprocess.Popen] = []  # servers running now, for the --timeout watchdog
COLUMNS = (
    "clients",
    "requests",
    "pairs",
    "pairs/s",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "mean batch",
    "errors",
    "lost",
    "duplicated",
)


def build_pairs(n: int) -> list[dict]:
    """n distinct (question, answer) pairs from builtin:easy-qa: gold and wrong answers."""
    pairs = []
    for example in load_dataset("builtin:easy-qa"):
        for answer in (example.answers[0], *example.wrong_answers):
            pairs.append(
                {
                    "id": f"p{len(pairs)}",
                    "question": example.messages[-1]["content"],
                    "response": answer,
                }
            )
            if len(pairs) == n:
                return pairs
    return pairs


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """`perturbprobe serve` in a subprocess on a free loopback port, ready on return; as a
    context manager it is always stopped on exit (``exit_code`` then holds its exit code)."""

    def __init__(self, args: argparse.Namespace, max_queue: int, *extra: str) -> None:
        self.port = free_port()
        self.exit_code: int | None = None
        command = [
            sys.executable,
            "-m",
            "perturbprobe",
            "-q",
            "serve",
            "--bundle",
            str(args.bundle),
            "--model",
            args.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--max-batch",
            str(args.max_batch),
            "--max-wait-ms",
            str(args.max_wait_ms),
            "--max-queue",
            str(max_queue),
            "--batch-size",
            str(args.batch_size),
            "--no-access-log",
            *extra,
        ]
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (open as long as the server)
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT)
        LIVE.append(self.process)
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(
                    f"the server exited {self.process.returncode} before it was ready:\n"
                    + self.output()
                )
            with contextlib.suppress(*HTTP_ERRORS):
                if self.request("GET", "/readyz")[0] == 200:
                    return
            time.sleep(0.2)
        raise SystemExit(f"the server was not ready within {READY_TIMEOUT:g} s:\n{self.output()}")

    def output(self) -> str:
        """What the server printed so far (stdout and stderr)."""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def connect(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=HTTP_TIMEOUT)

    def request(self, method, path, body=None, connection=None):
        """(status, response, parsed JSON body or text); a new connection unless given one."""
        own = connection is None
        connection = connection or self.connect()
        try:
            payload = None if body is None else json.dumps(body)
            connection.request(method, path, payload, {"Content-Type": "application/json"})
            response = connection.getresponse()
            data = response.read().decode()
        finally:
            if own:
                connection.close()
        kind = response.getheader("content-type", "")
        return response.status, response, json.loads(data) if "json" in kind else data

    def batch_totals(self) -> tuple[float, float]:
        """(sum, count) of the perturbprobe_batch_size histogram."""
        text = self.request("GET", "/metrics")[2]
        samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
        return samples["perturbprobe_batch_size_sum"], samples["perturbprobe_batch_size_count"]

    def stop(self) -> int:
        """SIGTERM, wait for the drain (kill after STOP_TIMEOUT); the exit code."""
        if self.exit_code is None:
            if self.process.poll() is None:
                self.process.send_signal(signal.SIGTERM)
                try:
                    self.process.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    self.process.kill()
                    self.process.wait()
            self.exit_code = self.process.returncode
            LIVE.remove(self.process)
        return self.exit_code


def start_watchdog(seconds: float) -> None:
    """End the whole run after ``seconds``, killing the servers still running."""

    def expire() -> None:
        print(f"\nstopped: the run took longer than --timeout {seconds:g} s", file=sys.stderr)
        for process in LIVE:
            process.kill()
        os._exit(1)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()


def percentiles(values: list[float]) -> list[float]:
    """The 1st to 99th percentiles (all equal to the value for a single one)."""
    if len(values) == 1:
        return values * 99
    return statistics.quantiles(values, n=100, method="inclusive")


def run_level(server: Server, pairs: list[dict], clients: int, per_client: int, per_request: int):
    """``clients`` threads, ``per_client`` requests of ``per_request`` pairs each; returns the
    level's row and {id: [served confidences]} of every result."""
    results: dict[str, list[float | None]] = {}
    latencies: list[float] = []
    errors = 0
    lock = threading.Lock()

    def client(k: int) -> None:
        nonlocal errors
        connection = server.connect()
        for r in range(per_client):
            first = (k * per_client + r) * per_request
            chunk = [pairs[(first + j) % len(pairs)] for j in range(per_request)]
            started = time.perf_counter()
            try:
                status, _, body = server.request("POST", "/v1/score", {"pairs": chunk}, connection)
            except HTTP_ERRORS:
                connection.close()  # it reconnects on the next request
                status = 0
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                if status != 200:
                    errors += 1
                    continue
                for result in body["results"]:
                    errors += result.get("error") is not None
                    results.setdefault(result["id"], []).append(result["confidence"])
        connection.close()

    before = server.batch_totals()
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - started
    after = server.batch_totals()
    sent = clients * per_client * per_request
    expected = Counter(pairs[i % len(pairs)]["id"] for i in range(sent))
    returned = Counter({key: len(values) for key, values in results.items()})
    q = percentiles(latencies)
    row = {
        "clients": clients,
        "requests": clients * per_client,
        "pairs": sent,
        "pairs/s": sent / wall,
        "p50 ms": 1000 * q[49],
        "p95 ms": 1000 * q[94],
        "p99 ms": 1000 * q[98],
        "mean batch": (after[0] - before[0]) / max(after[1] - before[1], 1),
        "errors": errors,
        "lost": (expected - returned).total(),
        "duplicated": (returned - expected).total(),
    }
    return row, results


def overload(server: Server, pairs: list[dict]) -> dict:
    """OVERLOAD_REQUESTS requests of OVERLOAD_PAIRS pairs at once; the answers' statuses,
    the wrong answers, and /readyz afterwards."""
    statuses: list[int] = []
    bad: list[str] = []

    def burst(k: int) -> None:
        chunk = [pairs[(OVERLOAD_PAIRS * k + j) % len(pairs)] for j in range(OVERLOAD_PAIRS)]
        try:
            status, response, body = server.request("POST", "/v1/score", {"pairs": chunk})
        except HTTP_ERRORS as exc:
            bad.append(f"no answer: {exc!r}")
            return
        statuses.append(status)
        if status == 503:
            kind = body.get("error", {}).get("type") if isinstance(body, dict) else None
            if not response.getheader("Retry-After") or kind != "queue_full":
                bad.append(f"503 without Retry-After or queue_full: {body}")
        elif status != 200:
            bad.append(f"status {status}: {body}")

    with ThreadPoolExecutor(OVERLOAD_REQUESTS) as pool:
        list(pool.map(burst, range(OVERLOAD_REQUESTS)))
    ready = server.request("GET", "/readyz")[0]
    return {"200": statuses.count(200), "503": statuses.count(503), "bad": bad, "ready": ready}


def compare(served: dict, reference: dict, tolerance: float) -> tuple[float, int, int]:
    """(max |Δ|, mismatches, results compared); an unscored pair (None) matches only NaN."""
    worst, mismatches, compared = 0.0, 0, 0
    for key, values in served.items():
        offline = reference[key]
        for value in values:
            compared += 1
            if value is None or math.isnan(offline):
                mismatches += (value is None) != math.isnan(offline)
                continue
            worst = max(worst, abs(value - offline))
            mismatches += abs(value - offline) > tolerance
    return worst, mismatches, compared


def print_table(rows: list[dict], n_pairs: int, offline_rate: float) -> None:
    print("\n| " + " | ".join(COLUMNS) + " |\n|" + "---|" * len(COLUMNS))
    for row in rows:
        cells = [f"{row[c]:.1f}" if isinstance(row[c], float) else str(row[c]) for c in COLUMNS]
        print("| " + " | ".join(cells) + " |")
    blank = " |" * (len(COLUMNS) - 4)
    print(f"| offline, one `Scorer.score` call | | {n_pairs} | {offline_rate:.1f} |{blank}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/smollm2-135m-instruct/auto"))
    parser.add_argument("--model", default="default", help="the LLM (load_llm name or path)")
    parser.add_argument("--clients", default="1,8,32,64", help="concurrent clients per level")
    parser.add_argument("--pairs-per-level", type=int, default=128, help="also the pool size")
    parser.add_argument("--pairs-per-request", type=int, default=1)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=50.0)
    parser.add_argument("--max-queue", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass")
    parser.add_argument("--tolerance", type=float, default=2e-3, help="largest |served-offline|")
    parser.add_argument("--skip-overload", action="store_true", help="no overload burst")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds for the whole run")
    args = parser.parse_args()
    start_watchdog(args.timeout)
    levels = [int(c) for c in args.clients.split(",")]
    pairs = build_pairs(args.pairs_per_level)
    served: dict[str, list[float | None]] = {}
    rows = []

    with Server(args, args.max_queue) as server:
        for clients in levels:
            per_client = math.ceil(len(pairs) / (clients * args.pairs_per_request))
            row, results = run_level(server, pairs, clients, per_client, args.pairs_per_request)
            rows.append(row)
            for key, values in results.items():
                served.setdefault(key, []).extend(values)
            print(
                " ".join(
                    f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                ),
                flush=True,
            )
    servers = {"server": server}
    burst = None
    if not args.skip_overload:
        extra = ("--max-pairs", str(OVERLOAD_PAIRS))
        with Server(args, OVERLOAD_QUEUE, *extra) as small:
            burst = overload(small, pairs)
        servers["overload server"] = small
    for name, stopped in servers.items():
        if stopped.exit_code != 0:
            print(f"the {name} exited {stopped.exit_code}; its output:\n{stopped.output()}")

    scorer = Scorer.load(args.bundle, llm=args.model, batch_size=args.batch_size)
    started = time.perf_counter()
    offline = scorer.score([{k: v for k, v in p.items() if k != "id"} for p in pairs])
    offline_rate = len(pairs) / (time.perf_counter() - started)
    reference = {p["id"]: float(c) for p, c in zip(pairs, offline.confidence, strict=True)}
    worst, mismatches, compared = compare(served, reference, args.tolerance)
    lost = sum(row["lost"] for row in rows)
    duplicated = sum(row["duplicated"] for row in rows)

    print_table(rows, len(pairs), offline_rate)
    print(
        f"\nserved == offline: {'yes' if mismatches == 0 else 'no'} (max |Δ| {worst:.2g} over "
        f"{compared} results, {mismatches} beyond {args.tolerance:g}; lost {lost}, "
        f"duplicated {duplicated})"
    )
    at32 = next((row["pairs/s"] for row in rows if row["clients"] == 32), None)
    if at32 is not None:
        print(
            f"throughput at 32 clients: {100 * at32 / offline_rate:.0f} % of offline "
            "(target >= 80 %)"
        )
    if burst is not None:
        print(
            f"overload ({OVERLOAD_REQUESTS} × {OVERLOAD_PAIRS} pairs at once, queue "
            f"{OVERLOAD_QUEUE}): {burst['200']} × 200, {burst['503']} × 503 with Retry-After, "
            f"{len(burst['bad'])} other; /readyz after: {burst['ready']}"
        )
        for line in burst["bad"][:5]:
            print(f"  {line}")
    codes = ", ".join(f"{name} {stopped.exit_code}" for name, stopped in servers.items())
    print(f"server exit code on SIGTERM: {codes}")
    failed = mismatches or lost or duplicated or any(s.exit_code for s in servers.values())
    if burst is not None:
        failed = failed or burst["bad"] or burst["ready"] != 200
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
