"""The HTTP serving: ``services.batcher`` with a fake predict function (no model), the app of
``services.server`` on a tiny mixture (TestClient, and uvicorn on a loopback port for raw
sockets), hostile clients, and the real ``serve`` command on the shipped pack (slow)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("fastapi")

from fastapi.testclient import TestClient  # noqa: E402

from tests.tinymodels import tiny_bert, tiny_pack  # noqa: E402
from ttmoe_core import cli  # noqa: E402
from ttmoe_core.bench.http import serving  # noqa: E402
from ttmoe_core.cli import mixture as cli_mixture  # noqa: E402
from ttmoe_core.moe import TTLoRAMoE  # noqa: E402
from ttmoe_core.services.batcher import Batcher, Closed, QueueFull  # noqa: E402
from ttmoe_core.services.server import ServeSettings, create_app  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- the batcher


class FakePredict:
    """Records each call; answers {"text", "pair", **options} per row after ``delay`` s, or
    waits for ``gate`` first; raises on a row "bad"."""

    def __init__(self, delay: float = 0.0, gate: threading.Event | None = None):
        self.delay, self.gate, self.calls = delay, gate, []

    def __call__(self, texts, pairs, **options):
        self.calls.append((list(texts), dict(options)))
        if self.gate is not None:
            assert self.gate.wait(10)
        time.sleep(self.delay)
        if "bad" in texts:
            raise ValueError("a bad row")
        return [{"text": t, "pair": p, **options} for t, p in zip(texts, pairs)]


def _wait(condition, seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def test_concurrent_requests_share_calls_and_keep_their_order():
    fake = FakePredict(delay=0.02)
    batcher = Batcher(fake, max_wait_s=0.02, max_rows=1000)
    requests = [[f"r{k}-{i}" for i in range(1 + k % 3)] for k in range(24)]
    with ThreadPoolExecutor(24) as pool:
        answers = list(pool.map(lambda rows: batcher.submit(rows, None).result(5), requests))
    batcher.close()
    assert [[a["text"] for a in got] for got in answers] == requests
    assert all(a["pair"] is None for got in answers for a in got)
    assert len(fake.calls) < len(requests) / 2          # coalesced
    assert sorted(t for texts, _ in fake.calls for t in texts) == sorted(
        t for rows in requests for t in rows)


def test_options_are_grouped_and_the_row_cap_holds():
    gate = threading.Event()
    fake = FakePredict(gate=gate)
    batcher = Batcher(fake, max_wait_s=0.05, max_rows=8)
    first = batcher.submit(["first"])                 # holds the worker until the gate opens
    _wait(lambda: fake.calls)
    options = [{"expert": "a", "abstain": False}, {"expert": "b", "abstain": True}]
    futures = [batcher.submit([f"x{k}", f"y{k}"], [f"p{k}", None], **options[k % 2])
               for k in range(8)]
    big = batcher.submit([f"big{i}" for i in range(10)])
    gate.set()
    for k, future in enumerate(futures):
        assert future.result(5) == [{"text": f"x{k}", "pair": f"p{k}", **options[k % 2]},
                                    {"text": f"y{k}", "pair": None, **options[k % 2]}]
    assert [a["text"] for a in big.result(5)] == [f"big{i}" for i in range(10)]
    assert first.result(5)[0]["text"] == "first"
    batcher.close()
    for texts, called_with in fake.calls[1:]:
        assert len(texts) <= 8 or texts[0] == "big0"   # a request over the cap: alone
        assert all(called_with == options[k % 2] for k in range(8) if f"x{k}" in texts)
    assert len(fake.calls) <= 1 + 4 + 1               # 2 rounds of 4 requests, 2 groups each


def test_without_coalescing_each_request_is_one_call():
    fake = FakePredict(delay=0.005)
    batcher = Batcher(fake, max_wait_s=0.05, coalesce=False)
    futures = [batcher.submit([f"t{k}"]) for k in range(6)]
    assert [f.result(5)[0]["text"] for f in futures] == [f"t{k}" for k in range(6)]
    batcher.close()
    assert [texts for texts, _ in fake.calls] == [[f"t{k}"] for k in range(6)]


def test_a_full_queue_refuses_and_a_failed_row_fails_only_its_request():
    gate = threading.Event()
    fake = FakePredict(gate=gate)
    batcher = Batcher(fake, max_wait_s=0.05, queue_size=2)
    running = batcher.submit(["running"])
    _wait(lambda: fake.calls)
    queued = [batcher.submit(["bad"]), batcher.submit(["good"])]
    assert batcher.depth() == 2
    with pytest.raises(QueueFull):
        batcher.submit(["one too many"])
    gate.set()
    assert running.result(5)[0]["text"] == "running"
    with pytest.raises(ValueError, match="a bad row"):
        queued[0].result(5)
    assert queued[1].result(5)[0]["text"] == "good"   # shared the failed call, retried alone
    batcher.close()


def test_a_timed_out_request_is_skipped_and_shutdown_drains_the_queue():
    gate = threading.Event()
    fake = FakePredict(gate=gate)
    batcher = Batcher(fake, max_wait_s=0.0)
    running = batcher.submit(["running"])
    _wait(lambda: fake.calls)
    given_up = batcher.submit(["given up"])
    with pytest.raises(TimeoutError):
        given_up.result(timeout=0.05)
    assert given_up.cancel()
    waiting = [batcher.submit([f"w{k}"]) for k in range(5)]
    closing = threading.Thread(target=batcher.close)
    closing.start()
    _wait(lambda: batcher.closed)
    with pytest.raises(Closed):
        batcher.submit(["late"])
    gate.set()
    closing.join(5)
    assert not closing.is_alive()
    assert running.result(0)[0]["text"] == "running"
    assert [f.result(0)[0]["text"] for f in waiting] == [f"w{k}" for k in range(5)]
    assert all("given up" not in texts for texts, _ in fake.calls)


# ----------------------------------------------------------------------------- the app


@pytest.fixture(scope="module")
def moe(tmp_path_factory) -> TTLoRAMoE:
    pack = tiny_pack(tmp_path_factory.mktemp("serve") / "pack", tiny_bert(), ["sst2", "rte"],
                     epochs=2)[0]
    return TTLoRAMoE.from_pack(pack, backbone=tiny_bert())


@pytest.fixture(scope="module")
def client(moe):
    with TestClient(create_app(moe, ServeSettings(max_wait_ms=30, max_body_bytes=2**20,
                                                  max_rows=64, max_text_chars=2000))) as client:
        yield client


ROWS = [{"text": "a fine, moving film"}, {"text": "The cat sat.", "text_pair": "A cat sits."},
        {"text": "dull " * 200}, {"text": "ok", "text_pair": "  "}]


def _same_json(records) -> list:
    return json.loads(json.dumps(records))


def _close(records):
    """``records`` as JSON with every float compared to 1e-6: a row answered in another
    micro-batch (alone, or beside other rows) rounds its float32 logits differently."""
    def approx(value):
        if isinstance(value, float):
            return pytest.approx(value, rel=1e-5, abs=1e-6)
        if isinstance(value, dict):
            return {k: approx(v) for k, v in value.items()}
        if isinstance(value, list):
            return [approx(v) for v in value]
        return value
    return approx(_same_json(records))


def test_answers_are_the_lines_of_predict_json(client, moe, tmp_path, capsys, monkeypatch):
    inputs = tmp_path / "inputs.jsonl"
    inputs.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    monkeypatch.setattr(cli_mixture, "load_mixture", lambda pack, device, dtype="float32", pool_dtype="float32", detector=True: moe)
    assert cli.main(["predict", "--json", "--pack", str(tmp_path), "--input-file",
                     str(inputs)]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    answer = client.post("/v1/predict", json={"rows": ROWS})
    assert answer.status_code == 200
    assert answer.json() == {"results": lines}
    expected = moe.predict([r["text"] for r in ROWS], [r.get("text_pair") for r in ROWS][:3] + [None])
    assert lines == _same_json(expected)
    assert lines[3]["text_pair"] is None and lines[2]["truncated"]
    one = client.post("/v1/predict", json={"text": "The cat sat.", "text_pair": "A cat sits."})
    assert one.json()["results"] == _close(expected[1:2])
    forced = client.post("/v1/predict", json={"rows": ROWS[:2], "expert": "rte", "abstain": True})
    assert forced.json()["results"] == _close(moe.predict(
        [r["text"] for r in ROWS[:2]], [None, "A cat sits."], expert="rte", abstain=True))
    assert {r["expert"] for r in forced.json()["results"]} == {"rte"}


def test_concurrent_requests_are_coalesced(moe):
    app = create_app(moe, ServeSettings(max_wait_ms=100))
    texts = [f"row {k} of a mixed batch" + " word" * k for k in range(12)]
    with TestClient(app) as client, ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(
            lambda t: client.post("/v1/predict", json={"text": t}).json()["results"][0], texts))
        metrics = client.get("/metrics").text
        calls = app.state.batcher.calls
    expected = moe.predict(texts)
    assert [a["text"] for a in answers] == texts
    assert [(a["expert"], a["label"]) for a in answers] == [(e["expert"], e["label"])
                                                            for e in expected]
    for got, want in zip(answers, expected):
        assert got["label_probs"] == pytest.approx(want["label_probs"], abs=1e-5)
    assert calls < len(texts)
    assert "ttmoe_rows_total 12.0" in metrics
    assert f"ttmoe_batch_rows_count {float(calls)}" in metrics


def test_experts_health_and_metrics(client, moe):
    experts = client.get("/v1/experts").json()
    assert experts["router"] is True and experts["max_length"] == moe.max_length
    assert [(e["name"], e["task"], e["labels"]) for e in experts["experts"]] == [
        (c.name, c.task, c.label_names) for c in moe.cards]
    assert client.get("/healthz").json()["status"] == "ok"
    client.post("/v1/predict", json={"rows": []})
    text = client.get("/metrics").text
    for line in ('ttmoe_http_requests_total{path="/v1/predict",status="422"}',
                 'ttmoe_http_requests_total{path="/v1/experts",status="200"}',
                 "ttmoe_queue_depth 0.0", "ttmoe_http_request_seconds_bucket"):
        assert line in text
    assert client.get("/openapi.json").json()["paths"]["/v1/predict"]["post"]["requestBody"]
    assert client.get("/docs").status_code == 200


@pytest.mark.parametrize("body, status, words", [
    (b"{not json", 422, "not JSON"),
    (b"[[[[" * 5000, 400, "error parsing the body"),       # nested past the recursion limit
    (b'{"text": 12}', 422, "text: Input should be a valid string"),
    (b'{"rows": "many"}', 422, "rows"),
    (b'{"rows": [{"text": "a"}], "abstain": "yes"}', 422, "abstain"),
    (b'{"text": "   "}', 422, "empty text"),
    (b'{"text": "\\ud800"}', 422, "text"),
    (b'{"text": "a", "extra": 1}', 422, "extra"),
    (b'{"text": "a", "expert": "nobody"}', 422, "unknown expert 'nobody'"),
    (b'{"rows": [{"text": "a"}], "text_pair": "b"}', 422, "text_pair goes with text"),
    (json.dumps({"text": "x" * 2001}).encode(), 422, "at most 2000 characters"),
    (json.dumps({"rows": [{"text": "a"}] * 100_000}).encode(), 413, "over 1,048,576 bytes"),
    (json.dumps({"rows": [{"text": "a"}] * 65}).encode(), 422, "at most 64 items"),
    (b"1" * (10 * 2**20), 413, "over"),
])
def test_hostile_bodies_get_one_line_errors(client, body, status, words):
    answer = client.post("/v1/predict", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert words in error and "\n" not in error


def test_a_streamed_body_is_capped_while_read_and_other_errors_are_json(client):
    chunks = (b"x" * 65536 for _ in range(64))                 # 4 MiB, no Content-Length
    answer = client.post("/v1/predict", content=chunks, headers={"content-type": "application/json"})
    assert answer.status_code == 413
    bad_length = client.post("/v1/predict", content=b"{}", headers={"content-length": "abc"})
    assert bad_length.status_code == 400
    assert client.get("/nowhere").json() == {"error": "Not Found"}
    assert client.get("/v1/predict").status_code == 405
    assert client.post("/v1/predict", content=b"{}", headers={"content-type": "text/plain"}
                       ).status_code == 422


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(["text", "text_pair", "rows", "expert",
                                                       "abstain", "x"]), inner, max_size=4),
                    max_leaves=12)


@settings(max_examples=150, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(body=JSON | st.builds(lambda rows: {"rows": rows}, st.lists(st.fixed_dictionaries(
    {"text": st.text(st.characters(codec=None, exclude_categories=()), max_size=40)},
    optional={"text_pair": st.none() | st.text(max_size=20)}), min_size=1, max_size=3)),
    raw=st.booleans(), junk=st.binary(max_size=64))
def test_arbitrary_bodies_never_get_a_5xx(client, body, raw, junk):
    content = junk if raw else json.dumps(body).encode()
    answer = client.post("/v1/predict", content=content, headers={"content-type": "application/json"})
    assert answer.status_code in (200, 400, 413, 422), answer.text
    if answer.status_code != 200:
        assert set(answer.json()) == {"error"}


class StubMixture:
    """What the app uses of a mixture, answering after ``delay`` s and, with a ``gate``, only once
    the gate is open (queue and timeout tests: requests pile up whatever the machine's load)."""
    names, cards, max_length, router = ["a"], [], 8, object()

    def __init__(self, delay: float, gate: threading.Event | None = None):
        self.delay, self.gate = delay, gate
        self.taken: list[str] = []           # texts handed to predict so far

    def expert_index(self, expert):
        return [0]

    def predict(self, texts, pairs, expert=None, abstain=False):
        self.taken += texts
        if self.gate is not None:
            self.gate.wait(30)
        time.sleep(self.delay)
        return [{"text": t} for t in texts]


def test_full_queue_is_503_with_retry_after_and_slow_answers_504():
    gate = threading.Event()
    app = create_app(StubMixture(0.0, gate), ServeSettings(max_wait_ms=0, queue_size=1, timeout_s=30))
    with TestClient(app) as client, ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client.post, "/v1/predict", json={"text": f"t{k}"}) for k in range(4)]
        _wait(lambda: sum(f.done() for f in futures) >= 2, seconds=20)    # two refused at once
        gate.set()
        answers = [f.result() for f in futures]
    statuses = sorted(a.status_code for a in answers)
    assert statuses.count(200) >= 2 and 503 in statuses
    refused = next(a for a in answers if a.status_code == 503)
    assert refused.headers["retry-after"] == "1" and "waiting" in refused.json()["error"]
    with TestClient(create_app(StubMixture(0.5), ServeSettings(timeout_s=0.1))) as client:
        late = client.post("/v1/predict", json={"text": "slow"})
        assert late.status_code == 504 and "0.1 s" in late.json()["error"]
        assert client.get("/healthz").status_code == 200


def _raw(port: int, data: bytes, read: bool = True) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(data)
        return sock.recv(65536) if read else b""


def test_slow_and_vanishing_clients_leave_the_server_serving(moe):
    app = create_app(moe, ServeSettings(timeout_s=0.5))
    with serving(app) as url:
        port = int(url.rsplit(":", 1)[1])
        head = b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        slow = _raw(port, head + b"Content-Length: 100\r\n\r\n{\"te")      # never finishes
        assert slow.startswith(b"HTTP/1.1 408")
        for _ in range(3):                                  # gone mid-body, gone before reading
            _raw(port, head + b"Content-Length: 100\r\n\r\n{\"text\"", read=False)
            body = json.dumps({"rows": [{"text": "word " * 50}] * 64}).encode()
            _raw(port, head + b"Content-Length: %d\r\n\r\n" % len(body) + body, read=False)
        import httpx

        _wait(lambda: app.state.batcher.depth() == 0)
        answer = httpx.post(f"{url}/v1/predict", json={"text": "still here"}, timeout=10)
        assert answer.status_code == 200
        assert httpx.get(f"{url}/healthz").json()["status"] == "ok"


def test_shutdown_answers_the_queued_requests():
    import httpx

    gate = threading.Event()
    stub = StubMixture(0.05, gate)
    app = create_app(stub, ServeSettings(max_wait_ms=0, queue_size=64))
    with ThreadPoolExecutor(8) as pool:
        with serving(app) as url:
            futures = [pool.submit(httpx.post, f"{url}/v1/predict", json={"text": f"t{k}"},
                                   timeout=30) for k in range(8)]
            # every request arrived: the first call holds some (behind the gate), the rest queue
            _wait(lambda: len(stub.taken) + app.state.batcher.depth() == 8, seconds=20)
            assert app.state.batcher.depth() >= 1
            threading.Timer(0.5, gate.set).start()        # opens while the server shuts down
        answers = [f.result() for f in futures]            # the server has stopped by now
    assert [a.status_code for a in answers] == [200] * 8
    assert [a.json()["results"][0]["text"] for a in answers] == [f"t{k}" for k in range(8)]
    assert app.state.batcher.closed


# ----------------------------------------------------------------------------- the command


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_serve_command_on_the_demo_pack_stops_cleanly_on_sigterm():
    import httpx

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(
        [sys.executable, "-m", "ttmoe_core", "serve", "--pack", str(REPO / "assets" / "demo"),
         "--port", str(port), "--log-level", "warning"], cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.communicate()
            try:
                if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline
            time.sleep(0.2)
        answer = httpx.post(f"{url}/v1/predict", timeout=30, json={
            "rows": [{"text": "a wonderful film"},
                     {"text": "A man eats.", "text_pair": "Someone is eating."}]})
        assert answer.status_code == 200
        results = answer.json()["results"]
        assert [r["expert"] for r in results] == ["sst2", "mnli"]
        assert results[0]["label"] == "positive"
        metrics = httpx.get(f"{url}/metrics").text
        assert 'ttmoe_http_requests_total{path="/v1/predict",status="200"} 1.0' in metrics
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err
        assert "serving 6 experts" in err and "Traceback" not in err
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
