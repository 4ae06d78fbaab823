"""`perturbprobe serve`: the micro-batcher, the ASGI app under an in-process client, and a real
uvicorn process on a free loopback port (tiny random Llama, real bundle on disk)."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tiny_models import make_tiny_llm, save_llm

from perturbprobe.bundles import Scorer
from perturbprobe.data import load_dataset
from perturbprobe.decoding import collect
from perturbprobe.errors import PerturbprobeWarning
from perturbprobe.features import extract
from perturbprobe.serve import ServeSettings, create_app
from perturbprobe.serve.batcher import MicroBatcher, QueueFull, ShuttingDown
from perturbprobe.training import fit_bundle

pytestmark = pytest.mark.usefixtures("one_intra_op_thread")

FAMILIES = "baseline,entropy_dynamics"
TIMEOUT = 60  # seconds: every wait in this module is bounded


@pytest.fixture(scope="module")
def llm():
    return make_tiny_llm("llama")


@pytest.fixture(scope="module")
def bundle_dir(llm, tmp_path_factory):
    """A logistic bundle (with a shift reference) on gold/wrong answers of 40 questions."""
    records = collect(None, load_dataset("builtin:easy-qa", limit=40), source="gold")
    featureset = extract(llm, records, families=FAMILIES, progress=False)
    with warnings.catch_warnings():  # tiny random model: no threshold certifies the risk
        warnings.simplefilter("ignore", PerturbprobeWarning)
        bundle = fit_bundle(featureset, probe="logistic", target_risk=0.45, n_bootstrap=10)
    return bundle.save(tmp_path_factory.mktemp("serve") / "bundle")


@pytest.fixture(scope="module")
def scorer(llm, bundle_dir):
    return Scorer.load(bundle_dir, llm=llm)


@pytest.fixture(scope="module")
def pairs():
    """20 pairs on questions the bundle never saw, each with an id."""
    examples = load_dataset("builtin:easy-qa", limit=60)[40:]
    return [
        {"id": f"p{i}", "question": ex.messages[-1]["content"], "response": ex.answers[0]}
        for i, ex in enumerate(examples)
    ]


@pytest.fixture(scope="module")
def offline(scorer, pairs):
    """The offline Scorer's confidences of ``pairs`` by id (one batched call)."""
    scores = scorer.score([{k: v for k, v in p.items() if k != "id"} for p in pairs])
    return {p["id"]: c for p, c in zip(pairs, scores.confidence, strict=True)}


# ====================================================================== 1. the micro-batcher


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, TIMEOUT))


class Recorder:
    """A fake ``score_batch``: records each batch, answers ``pair * 10``; can be held."""

    def __init__(self, fail: bool = False) -> None:
        self.batches: list[list] = []
        self.release = threading.Event()
        self.release.set()
        self.fail = fail

    def __call__(self, pairs):
        self.release.wait(TIMEOUT)
        self.batches.append(list(pairs))
        if self.fail:
            raise RuntimeError("boom")
        return [pair * 10 for pair in pairs]


def test_batcher_merges_concurrent_requests_and_answers_each_in_order():
    recorder = Recorder()

    async def main():
        batcher = MicroBatcher(recorder, max_batch=64, max_wait=0.5, max_queue=64)
        await batcher.start()
        requests = [list(range(10 * r, 10 * r + 1 + r % 3)) for r in range(8)]  # 15 pairs
        answers = await asyncio.gather(*(batcher.score(r) for r in requests))
        await batcher.stop()
        return requests, answers

    requests, answers = run(main())
    assert answers == [[p * 10 for p in r] for r in requests]
    assert len(recorder.batches) == 1 and len(recorder.batches[0]) == 15


def test_batcher_cuts_batches_at_max_batch_and_waits_at_most_max_wait():
    recorder = Recorder()

    async def main():
        batcher = MicroBatcher(recorder, max_batch=4, max_wait=0.05, max_queue=64)
        await batcher.start()
        answers = await batcher.score(list(range(10)))
        started = time.monotonic()
        lonely = await batcher.score([99])  # nobody else comes: scored after ~max_wait
        waited = time.monotonic() - started
        await batcher.stop()
        return answers, lonely, waited

    answers, lonely, waited = run(main())
    assert answers == [p * 10 for p in range(10)] and lonely == [990]
    assert [len(b) for b in recorder.batches] == [4, 4, 2, 1]
    assert 0.04 <= waited < 2.0


def test_batcher_refuses_what_does_not_fit_and_drops_timed_out_pairs():
    recorder = Recorder()
    recorder.release.clear()  # the worker holds its first batch

    async def main():
        batcher = MicroBatcher(recorder, max_batch=1, max_wait=0.0, max_queue=3)
        await batcher.start()
        first = asyncio.create_task(batcher.score([1]))
        await asyncio.sleep(0.1)  # the worker took it and is held
        queued = asyncio.create_task(batcher.score([2, 3], timeout=0.2))
        await asyncio.sleep(0.05)
        with pytest.raises(QueueFull, match="2 pairs are waiting and this request adds 2"):
            await batcher.score([4, 5])
        with pytest.raises(TimeoutError, match=r"no result within 0\.2 s"):
            await queued
        recorder.release.set()
        assert await first == [10]
        assert await batcher.score([6]) == [60]
        await batcher.stop()
        with pytest.raises(ShuttingDown):
            await batcher.score([7])

    run(main())
    assert recorder.batches == [[1], [6]]  # the timed-out pairs 2 and 3 were never scored


def test_batcher_error_reaches_every_waiting_request_and_the_worker_lives_on():
    recorder = Recorder(fail=True)

    async def main():
        batcher = MicroBatcher(recorder, max_batch=8, max_wait=0.2, max_queue=8)
        await batcher.start()
        results = await asyncio.gather(
            batcher.score([1]), batcher.score([2, 3]), return_exceptions=True
        )
        recorder.fail = False
        after = await batcher.score([4])
        await batcher.stop()
        return results, after

    results, after = run(main())
    assert all(isinstance(r, RuntimeError) for r in results) and after == [40]


# ============================================================== 2. the app, in-process client


@contextlib.asynccontextmanager
async def client_for(app, **headers):
    """An httpx client talking to ``app`` in-process, with its lifespan running."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://test", headers=headers, timeout=TIMEOUT
        ) as client:
            yield client


def serve_requests(app, *requests, **headers):
    """Send ``(method, path, kwargs)`` requests concurrently; the responses in order."""

    async def main():
        async with client_for(app, **headers) as client:
            return await asyncio.gather(*(client.request(m, p, **kw) for m, p, kw in requests))

    return run(main())


def score_request(payload):
    return ("POST", "/v1/score", {"json": payload})


def metric_samples(text: str) -> dict[tuple[str, tuple], float]:
    """Prometheus text → {(sample name, sorted labels): value} (raises if it does not parse)."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def test_served_confidences_equal_the_offline_scorer(scorer, pairs, offline):
    """One request per pair, all at once: merged into batches, each result back in its
    request with its id, equal to the offline scorer (1e-4: another batching moves features
    by float32 rounding)."""
    app = create_app(scorer, ServeSettings(max_batch=8, max_wait_ms=50))
    responses = serve_requests(app, *(score_request({"pairs": [p]}) for p in pairs))
    for pair, response in zip(pairs, responses, strict=True):
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["bundle"] == scorer.bundle.manifest["manifest_sha256"]
        (result,) = body["results"]
        assert result["id"] == pair["id"]
        assert result["confidence"] == pytest.approx(offline[pair["id"]], abs=1e-4)
        threshold = scorer.bundle.abstention.threshold
        assert result["abstain"] == (threshold is None or result["confidence"] < threshold)
        assert body["shift"]["n"] == 1 and body["shift"]["statistic"] is None
    assert app.state.batcher.batches < len(pairs)


def test_one_request_with_every_pair_is_the_offline_call(scorer, pairs, offline):
    """All pairs in one request: one batch of the same pairs, so exactly the offline values;
    the request's shift check is the offline batch's."""
    app = create_app(scorer, ServeSettings(max_batch=64))
    (response,) = serve_requests(app, score_request({"pairs": pairs}))
    body = response.json()
    assert [r["id"] for r in body["results"]] == [p["id"] for p in pairs]
    assert [r["confidence"] for r in body["results"]] == [offline[p["id"]] for p in pairs]
    shift = scorer.score([{k: v for k, v in p.items() if k != "id"} for p in pairs]).shift
    assert body["shift"]["n"] == len(pairs) == shift.n
    assert body["shift"]["statistic"] == pytest.approx(shift.statistic)
    assert body["shift"]["shifted"] == shift.shifted


def test_concurrent_requests_are_merged_into_one_extraction(scorer, pairs, monkeypatch):
    calls = []
    real_score = scorer.score

    def counting_score(batch, **kwargs):
        calls.append(len(batch))
        return real_score(batch, **kwargs)

    monkeypatch.setattr(scorer, "score", counting_score)
    app = create_app(scorer, ServeSettings(max_batch=8, max_wait_ms=2000))
    requests = [score_request({"pairs": [p]}) for p in pairs[:8]]
    responses = serve_requests(app, *requests, ("GET", "/metrics", {}))
    assert all(r.status_code == 200 for r in responses[:8])
    assert calls == [8]  # a full batch went at once, without waiting the 2 s
    (metrics,) = serve_requests(app, ("GET", "/metrics", {}))
    samples = metric_samples(metrics.text)
    assert samples[("perturbprobe_batch_size_count", ())] == 1
    assert samples[("perturbprobe_batch_size_sum", ())] == 8


def test_unscorable_pairs_get_an_error_and_the_others_are_scored(scorer, pairs, offline):
    too_long = {"question": "Say it.", "response": "blue " * 300}  # > the 256-token context
    batch = [pairs[0], {"question": "Say it.", "response": "  ", "id": "empty"}, too_long]
    (response,) = serve_requests(create_app(scorer), score_request({"pairs": batch}))
    assert response.status_code == 200
    first, empty, long = response.json()["results"]
    assert first["confidence"] == pytest.approx(offline["p0"], abs=1e-4) and "error" not in first
    assert empty == {
        "id": "empty",
        "confidence": None,
        "abstain": True,
        "error": "pair: the response is empty",
    }
    assert long["confidence"] is None and "exceed the model's context of 256" in long["error"]


LIMITS = ServeSettings(max_pairs=3, max_response_chars=50, max_body_bytes=4000, max_queue=8)
PAIR = {"question": "q", "response": "r"}


@pytest.mark.parametrize(
    ("body", "status", "kind", "message"),
    [
        (b'{"pairs": [', 400, "invalid_json", "request body is not valid JSON"),
        (b"[]", 422, "invalid_request", "body: Input should be a valid dictionary"),
        (b'{"pairs": []}', 422, "invalid_request", "pairs: List should have at least 1 item"),
        (b'{"pair": []}', 422, "invalid_request", "pairs: Field required"),
        (
            json.dumps({"pairs": [PAIR] * 4}).encode(),
            422,
            "invalid_request",
            "pairs: at most 3 pairs per request, got 4",
        ),
        (
            json.dumps({"pairs": [{"question": "q"}]}).encode(),
            422,
            "invalid_request",
            "pairs[0].response: Field required",
        ),
        (
            json.dumps({"pairs": [PAIR, {"question": "q", "response": 3}]}).encode(),
            422,
            "invalid_request",
            "pairs[1].response: Input should be a valid string",
        ),
        (
            json.dumps({"pairs": [{"response": "r"}]}).encode(),
            422,
            "invalid_request",
            "pairs[0]: give exactly one of 'messages' and 'question'",
        ),
        (
            json.dumps(
                {"pairs": [{"messages": [{"role": "bot", "content": "x"}], "response": "r"}]}
            ).encode(),
            422,
            "invalid_request",
            "pairs[0].messages[0].role: Input should be",
        ),
        (
            json.dumps({"pairs": [{**PAIR, "confidence": 1}]}).encode(),
            422,
            "invalid_request",
            "pairs[0]: field 'confidence' is reserved for the result",
        ),
        (
            json.dumps({"pairs": [{"question": "q", "response": "r" * 51}]}).encode(),
            422,
            "invalid_request",
            "pairs[0].response: longer than the limit of 50 characters (51)",
        ),
        (
            json.dumps({"pairs": [PAIR], "x": "y" * 5000}).encode(),
            413,
            "too_large",
            "request body is larger than the limit of 4000 bytes",
        ),
    ],
    ids=[
        "malformed-json",
        "not-an-object",
        "no-pairs",
        "missing-pairs",
        "too-many-pairs",
        "missing-response",
        "response-not-a-string",
        "no-prompt",
        "bad-role",
        "reserved-field",
        "response-too-long",
        "body-too-large",
    ],
)
def test_bad_requests_get_a_status_and_a_message_naming_the_field(
    scorer, body, status, kind, message
):
    app = create_app(scorer, LIMITS)
    request = (
        "POST",
        "/v1/score",
        {"content": body, "headers": {"content-type": "application/json"}},
    )
    response, metrics = serve_requests(app, request, ("GET", "/metrics", {}))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["type"] == kind and message in error["message"], error
    (metrics,) = serve_requests(app, ("GET", "/metrics", {}))
    samples = metric_samples(metrics.text)
    assert samples[("perturbprobe_errors_total", (("kind", kind),))] == 1
    assert (
        samples[
            ("perturbprobe_requests_total", (("endpoint", "/v1/score"), ("status", str(status))))
        ]
        == 1
    )


def test_a_streamed_body_past_the_limit_is_cut_off(scorer):
    """Without a Content-Length the body limit is enforced while reading: 413 once the
    streamed chunks pass it, the rest is never read."""
    app = create_app(scorer, LIMITS)
    chunks = [b'{"pairs": [{"question": "q", "response": "' + b"x" * 1000 for _ in range(10)]
    sent = []

    async def receive():
        sent.append(1)
        return {"type": "http.request", "body": chunks[len(sent) - 1], "more_body": True}

    messages = []

    async def send(message):
        messages.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/v1/score",
        "raw_path": b"/v1/score",
        "query_string": b"",
        "headers": [(b"content-type", b"application/json")],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("test", 80),
        "client": None,
        "root_path": "",
    }

    async def main():
        async with app.router.lifespan_context(app):
            await app(scope, receive, send)

    run(main())
    assert messages[0]["status"] == 413 and len(sent) == 4  # 4 × 1,043 bytes > 4,000
    assert json.loads(messages[1]["body"])["error"]["type"] == "too_large"


def test_a_full_queue_gets_503_with_retry_after_and_a_slow_one_504(scorer, pairs, monkeypatch):
    held = threading.Event()
    real_score = scorer.score

    def held_score(batch, **kwargs):
        held.wait(TIMEOUT)
        return real_score(batch, **kwargs)

    monkeypatch.setattr(scorer, "score", held_score)
    settings = ServeSettings(
        max_batch=1, max_wait_ms=0, max_queue=2, max_pairs=2, request_timeout=1.0
    )
    app = create_app(scorer, settings)

    async def main():
        async with client_for(app) as client:
            post = lambda n: client.post("/v1/score", json={"pairs": pairs[:n]})  # noqa: E731
            first = asyncio.create_task(post(1))  # taken by the worker, held
            await asyncio.sleep(0.3)
            queued = asyncio.create_task(post(2))  # fills the queue
            await asyncio.sleep(0.3)
            full = await post(1)
            ready = await client.get("/readyz")
            timed_out = await queued
            held.set()
            return full, ready, timed_out, await first

    full, ready, timed_out, first = run(main())
    assert full.status_code == 503 and int(full.headers["Retry-After"]) >= 1
    assert full.json()["error"]["type"] == "queue_full"
    assert "the queue holds at most 2" in full.json()["error"]["message"]
    assert ready.status_code == 200  # overloaded is not unready
    assert timed_out.status_code == 504 and timed_out.json()["error"]["type"] == "timeout"
    assert first.status_code == 504  # held past the 1 s request timeout too


def test_api_key_is_required_on_scoring_and_metrics_only(scorer):
    app = create_app(scorer, ServeSettings(api_key="s3cret"))
    body = {"json": {"pairs": [PAIR]}}
    responses = serve_requests(
        app,
        ("POST", "/v1/score", body),
        ("POST", "/v1/score", {**body, "headers": {"Authorization": "Bearer wrong"}}),
        ("POST", "/v1/score", {**body, "headers": {"Authorization": "Basic s3cret"}}),
        ("GET", "/metrics", {}),
        ("GET", "/v1/bundle", {}),
        ("POST", "/v1/score", {**body, "headers": {"Authorization": "Bearer s3cret"}}),
        ("GET", "/metrics", {"headers": {"Authorization": "bearer s3cret"}}),
        ("GET", "/healthz", {}),
        ("GET", "/readyz", {}),
        ("GET", "/openapi.json", {}),
    )
    assert [r.status_code for r in responses] == [401] * 5 + [200] * 5
    assert responses[0].headers["WWW-Authenticate"] == "Bearer"
    assert responses[0].json()["error"]["type"] == "unauthorized"
    with pytest.raises(ValueError, match="api_key must not be empty"):
        ServeSettings(api_key="")


def test_metrics_parse_as_prometheus_text_and_count_what_happened(scorer, pairs):
    app = create_app(scorer)
    bad = {"pairs": [{"question": "q", "response": ""}, pairs[0]]}
    serve_requests(app, score_request({"pairs": pairs[:3]}), score_request(bad))
    (response,) = serve_requests(app, ("GET", "/metrics", {}))
    assert response.headers["content-type"].startswith("text/plain")
    samples = metric_samples(response.text)
    assert samples[("perturbprobe_pairs_total", (("outcome", "scored"),))] == 4
    assert samples[("perturbprobe_pairs_total", (("outcome", "error"),))] == 1
    assert samples[("perturbprobe_errors_total", (("kind", "unscorable_pair"),))] == 1
    assert samples[("perturbprobe_request_latency_seconds_count", ())] == 2
    assert samples[("perturbprobe_queue_depth", ())] == 0
    assert samples[("perturbprobe_in_flight_requests", ())] == 0
    assert (
        samples[("perturbprobe_requests_total", (("endpoint", "/v1/score"), ("status", "200")))]
        == 2
    )


def test_bundle_identity_health_and_openapi(scorer):
    app = create_app(scorer)
    bundle, health, ready, schema, missing = serve_requests(
        app,
        ("GET", "/v1/bundle", {}),
        ("GET", "/healthz", {}),
        ("GET", "/readyz", {}),
        ("GET", "/openapi.json", {}),
        ("GET", "/nope", {}),
    )
    identity = bundle.json()
    manifest = scorer.bundle.manifest
    assert identity["id"] == manifest["manifest_sha256"]
    assert identity["llm"]["fingerprint"] == scorer.llm.identity()["fingerprint"]
    assert identity["probe"]["name"] == "logistic" and identity["metrics"] == manifest["metrics"]
    assert identity["families"] == ["baseline", "entropy_dynamics"]
    assert health.json() == {"status": "ok"}
    assert ready.json() == {"status": "ready", "bundle": manifest["manifest_sha256"]}
    assert "/v1/score" in schema.json()["paths"]
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found"


def test_a_draining_service_is_unready_and_takes_no_new_work(scorer):
    app = create_app(scorer)

    async def main():
        async with client_for(app) as client:
            app.state.draining = True
            return await client.get("/readyz"), await client.post(
                "/v1/score", json={"pairs": [PAIR]}
            )

    ready, score = run(main())
    assert ready.status_code == 503 and score.status_code == 503
    assert score.json()["error"]["type"] == "shutting_down" and score.headers["Retry-After"] == "1"


def test_an_internal_error_is_a_500_and_the_service_goes_on(scorer, pairs, monkeypatch):
    real_score = scorer.score
    failures = [RuntimeError("CUDA out of memory")]

    def flaky_score(batch, **kwargs):
        if failures:
            raise failures.pop()
        return real_score(batch, **kwargs)

    monkeypatch.setattr(scorer, "score", flaky_score)
    app = create_app(scorer)
    (failed,) = serve_requests(app, score_request({"pairs": pairs[:1]}))
    (ok,) = serve_requests(app, score_request({"pairs": pairs[:1]}))
    assert failed.status_code == 500
    assert failed.json() == {
        "error": {"type": "internal", "message": "internal error while scoring; see the server log"}
    }
    assert ok.status_code == 200


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"max_pairs": 300, "max_queue": 256}, "must not exceed max_queue"),
        ({"max_batch": 0}, "max_batch must be at least 1"),
        ({"request_timeout": 0}, "request_timeout > 0"),
    ],
)
def test_settings_refuse_impossible_limits(settings, message):
    with pytest.raises(ValueError, match=message):
        ServeSettings(**settings)


# =================================================================== 3. a real uvicorn process


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def console_script() -> list[str]:
    script = Path(sys.executable).parent / "perturbprobe"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "perturbprobe.cli"]


@pytest.fixture(scope="module")
def saved_model(llm, tmp_path_factory):
    directory = tmp_path_factory.mktemp("serve-model") / "tiny-llama"
    save_llm(llm, directory)
    return directory


@contextlib.contextmanager
def server_process(tmp_path, *args, env=None):
    """``perturbprobe serve ARGS`` on a free port; yields (popen, port, stderr path)."""
    port = free_port()
    log = tmp_path / "serve.stderr"
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    with open(log, "wb") as stderr:
        popen = subprocess.Popen(
            [*console_script(), "serve", "--device", "cpu", "--port", str(port), *map(str, args)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env=environment,
        )
    try:
        yield popen, port, log
    finally:
        if popen.poll() is None:
            popen.kill()
        popen.wait(TIMEOUT)


def wait_ready(popen, port, log) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        assert popen.poll() is None, log.read_text()
        with contextlib.suppress(OSError):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            connection.request("GET", "/readyz")
            if connection.getresponse().status == 200:
                return
        time.sleep(0.1)
    pytest.fail(f"not ready in {TIMEOUT} s:\n{log.read_text()}")


def post_json(port, path, payload, headers=None):
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    connection.request(
        "POST", path, json.dumps(payload), {"Content-Type": "application/json", **(headers or {})}
    )
    response = connection.getresponse()
    return response.status, json.loads(response.read())


def test_serve_process_scores_like_offline_and_drains_on_sigterm(
    tmp_path, saved_model, bundle_dir, pairs, offline
):
    """The real command: scores equal the offline scorer; SIGTERM while a request waits in
    the batcher (--max-wait-ms 1500) still answers it, refuses new connections, exits 0."""
    args = [
        "--model",
        saved_model,
        "--bundle",
        bundle_dir,
        "--max-wait-ms",
        "1500",
        "--api-key-env",
        "PP_TEST_KEY",
    ]
    with server_process(tmp_path, *args, env={"PP_TEST_KEY": "k"}) as (popen, port, log):
        wait_ready(popen, port, log)
        auth = {"Authorization": "Bearer k"}
        assert post_json(port, "/v1/score", {"pairs": pairs[:2]})[0] == 401
        status, body = post_json(port, "/v1/score", {"pairs": pairs[:4]}, auth)
        assert status == 200
        for pair, result in zip(pairs[:4], body["results"], strict=True):
            assert result["confidence"] == pytest.approx(offline[pair["id"]], abs=1e-4)
        in_flight = {}
        thread = threading.Thread(
            target=lambda: in_flight.update(
                answer=post_json(port, "/v1/score", {"pairs": pairs[4:5]}, auth)
            )
        )
        thread.start()
        time.sleep(0.5)  # the request now waits in the batcher for more pairs
        popen.send_signal(signal.SIGTERM)
        thread.join(TIMEOUT)
        status, body = in_flight["answer"]
        assert status == 200
        assert body["results"][0]["confidence"] == pytest.approx(offline["p4"], abs=1e-4)
        assert popen.wait(TIMEOUT) == 0, log.read_text()
        with pytest.raises(OSError):
            post_json(port, "/v1/score", {"pairs": pairs[:1]}, auth)
    stderr = log.read_text()
    assert "Traceback" not in stderr and pairs[4]["response"] not in stderr  # no bodies logged


def test_serve_refuses_to_start_on_a_bad_bundle_or_a_missing_key(tmp_path, saved_model, bundle_dir):
    corrupt = tmp_path / "corrupt"
    shutil.copytree(bundle_dir, corrupt)
    (corrupt / "calibrators.json").write_text("{}")
    cases = [
        (["--bundle", corrupt], "is corrupt or was modified (sha256 mismatch)"),
        (
            ["--bundle", bundle_dir, "--api-key-env", "PP_UNSET_KEY"],
            "--api-key-env PP_UNSET_KEY: that environment variable is unset or empty",
        ),
        (["--bundle", bundle_dir, "--max-pairs", "300"], "must not exceed max_queue"),
    ]
    for args, message in cases:
        with server_process(tmp_path, "--model", saved_model, *args) as (popen, _, log):
            assert popen.wait(TIMEOUT) == 1
            lines = log.read_text().strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("perturbprobe: error: "), lines
            assert message in lines[0]
