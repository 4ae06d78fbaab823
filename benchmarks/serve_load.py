"""Load test of `perturbprobe serve`: throughput, latency and exactness under concurrency.

Starts the server on a free loopback port (the bundle `make demo` saves, the default LLM),
then for each number of concurrent clients (default 1, 8, 32, 64) runs that many threads, each
with its own keep-alive connection sending a fixed number of one-pair requests, and prints a
table: pairs/s, p50/p95/p99 latency, mean extraction batch size (from /metrics), errors, lost
and duplicated results. Then an overload burst against a small queue (every answer must be
200 or 503 with Retry-After, and the server still ready), then SIGTERM (exit code 0 expected).
After the server has stopped, the same pairs are scored offline with one `Scorer.score` call,
and every served confidence is compared with its offline value.

Targets (issue 12): throughput at 32 clients >= 80 % of offline batched scoring; zero lost,
duplicated or mismatched results; overload answers 503, never a crash. Exit status 1 when
a result is lost, duplicated or mismatched, or the server misbehaves.

    python benchmarks/serve_load.py [--bundle models/smollm2-135m-instruct/auto]
        [--clients 1,8,32,64] [--pairs-per-level 128] [--max-batch 32] [--max-wait-ms 50]
        [--tolerance 2e-3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import math
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from perturbprobe.data import load_dataset
from perturbprobe.probes import Scorer

HTTP_TIMEOUT = 300.0


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
    """`perturbprobe serve` in a subprocess on a free loopback port."""

    def __init__(self, args: argparse.Namespace, *extra: str) -> None:
        self.port = free_port()
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
            "--port",
            str(self.port),
            "--max-batch",
            str(args.max_batch),
            "--max-wait-ms",
            str(args.max_wait_ms),
            "--batch-size",
            str(args.batch_size),
            "--no-access-log",
            *extra,
        ]
        self.log = open(Path("runs") / f"serve-load-{self.port}.log", "w+b")  # noqa: SIM115
        self.process = subprocess.Popen(command, stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise SystemExit(f"the server exited {self.process.returncode}:\n{self.output()}")
            try:
                if self.request("GET", "/readyz")[0] == 200:
                    return
            except OSError:
                time.sleep(0.2)
        raise SystemExit("the server was not ready within 180 s")

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def request(self, method, path, body=None, connection=None):
        """(status, headers, parsed body or text)."""
        own = connection is None
        connection = connection or http.client.HTTPConnection(
            "127.0.0.1", self.port, timeout=HTTP_TIMEOUT
        )
        payload = None if body is None else json.dumps(body)
        connection.request(method, path, payload, {"Content-Type": "application/json"})
        response = connection.getresponse()
        data = response.read().decode()
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
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait(60)


def run_level(server: Server, pairs: list[dict], clients: int, per_client: int):
    """``clients`` threads, ``per_client`` one-pair requests each; returns the level's row
    and {id: [confidences]} of every result."""
    results: dict[str, list[float]] = {}
    latencies: list[float] = []
    errors = [0]
    lock = threading.Lock()

    def client(k: int) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=HTTP_TIMEOUT)
        for r in range(per_client):
            pair = pairs[(k * per_client + r) % len(pairs)]
            started = time.perf_counter()
            status, _, body = server.request("POST", "/v1/score", {"pairs": [pair]}, connection)
            elapsed = time.perf_counter() - started
            with lock:
                latencies.append(elapsed)
                if status != 200:
                    errors[0] += 1
                    continue
                for result in body["results"]:
                    if result.get("error") is not None:
                        errors[0] += 1
                    results.setdefault(result["id"], []).append(result["confidence"])
        connection.close()

    before = server.batch_totals()
    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.perf_counter() - started
    after = server.batch_totals()
    sent = clients * per_client
    q = (
        statistics.quantiles(latencies, n=100, method="inclusive")
        if len(latencies) > 1
        else [latencies[0]] * 99
    )
    row = {
        "clients": clients,
        "requests": sent,
        "pairs/s": sent / wall,
        "p50 ms": 1000 * q[49],
        "p95 ms": 1000 * q[94],
        "p99 ms": 1000 * q[98],
        "mean batch": (after[0] - before[0]) / max(after[1] - before[1], 1),
        "errors": errors[0],
    }
    return row, results


def overload(server: Server, pairs: list[dict], threads: int = 48) -> dict:
    """``threads`` requests of 8 pairs at once against the small-queue server."""
    statuses: list[int] = []
    bad: list[str] = []

    def burst(k: int) -> None:
        chunk = [pairs[(8 * k + j) % len(pairs)] for j in range(8)]
        status, response, body = server.request("POST", "/v1/score", {"pairs": chunk})
        statuses.append(status)
        if status == 503 and not (
            response.getheader("Retry-After") and body["error"]["type"] == "queue_full"
        ):
            bad.append(f"503 without Retry-After/queue_full: {body}")
        elif status not in (200, 503):
            bad.append(f"status {status}: {body}")

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(burst, range(threads)))
    ready = server.request("GET", "/readyz")[0]
    return {"200": statuses.count(200), "503": statuses.count(503), "bad": bad, "ready": ready}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("models/smollm2-135m-instruct/auto"))
    parser.add_argument("--model", default="default")
    parser.add_argument("--clients", default="1,8,32,64")
    parser.add_argument("--pairs-per-level", type=int, default=128)
    parser.add_argument("--max-batch", type=int, default=32)
    parser.add_argument("--max-wait-ms", type=float, default=50.0)
    parser.add_argument("--batch-size", type=int, default=8, help="pairs per forward pass")
    parser.add_argument("--tolerance", type=float, default=2e-3)
    args = parser.parse_args()
    Path("runs").mkdir(exist_ok=True)
    levels = [int(c) for c in args.clients.split(",")]
    pairs = build_pairs(args.pairs_per_level)
    served: dict[str, list[float]] = {}
    rows, sent_ids = [], []

    server = Server(args)
    try:
        for clients in levels:
            per_client = math.ceil(len(pairs) / clients)
            row, results = run_level(server, pairs, clients, per_client)
            rows.append(row)
            expected = [pairs[i % len(pairs)]["id"] for i in range(clients * per_client)]
            sent_ids.append(expected)
            row["lost"] = sum(
                max(expected.count(i) - len(results.get(i, [])), 0) for i in set(expected)
            )
            row["duplicated"] = sum(max(len(v) - expected.count(i), 0) for i, v in results.items())
            for key, values in results.items():
                served.setdefault(key, []).extend(values)
            print(
                " ".join(
                    f"{k}={v:.1f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()
                ),
                flush=True,
            )
    finally:
        exit_code = server.stop()
    small = Server(args, "--max-queue", "32", "--max-pairs", "8")
    try:
        burst = overload(small, pairs)
    finally:
        small_exit = small.stop()

    scorer = Scorer.load(args.bundle, llm=args.model, batch_size=args.batch_size)
    started = time.perf_counter()
    offline = scorer.score([{k: v for k, v in p.items() if k != "id"} for p in pairs])
    offline_rate = len(pairs) / (time.perf_counter() - started)
    reference = {p["id"]: c for p, c in zip(pairs, offline.confidence, strict=True)}
    differences = [abs(c - reference[i]) for i, values in served.items() for c in values]
    mismatches = sum(d > args.tolerance for d in differences)

    header = [
        "clients",
        "requests",
        "pairs/s",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "mean batch",
        "errors",
        "lost",
        "duplicated",
    ]
    print("\n| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        cells = [f"{row[h]:.1f}" if isinstance(row[h], float) else str(row[h]) for h in header]
        print("| " + " | ".join(cells) + " |")
    print(
        f"| offline `Scorer.score`, one call | {len(pairs)} pairs | {offline_rate:.1f} | | | | "
        f"{len(pairs)} | | | |"
    )
    at32 = next((r["pairs/s"] for r in rows if r["clients"] == 32), None)
    lost = sum(r["lost"] for r in rows)
    duplicated = sum(r["duplicated"] for r in rows)
    print(
        f"\nserved == offline: {'yes' if mismatches == 0 else 'no'} (max |Δ| "
        f"{max(differences):.2g} over {len(differences)} results, {mismatches} beyond "
        f"{args.tolerance:g}; lost {lost}, duplicated {duplicated})"
    )
    if at32 is not None:
        print(
            f"throughput at 32 clients: {100 * at32 / offline_rate:.0f} % of offline "
            "(target >= 80 %)"
        )
    print(
        f"overload (48 × 8 pairs at once, queue 32): {burst['200']} × 200, {burst['503']} × "
        f"503 with Retry-After, {len(burst['bad'])} other; /readyz after: {burst['ready']}"
    )
    print(f"server exit code on SIGTERM: {exit_code} (overload server: {small_exit})")
    failed = mismatches or lost or duplicated or burst["bad"] or burst["ready"] != 200
    return 1 if failed or exit_code or small_exit else 0


if __name__ == "__main__":
    sys.exit(main())
