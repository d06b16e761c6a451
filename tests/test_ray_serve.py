"""``services.ray_serve``: the pack on Ray Serve. Fast: how a coalesced batch is split into
``predict`` calls (``answer_jobs``, on a recording stand-in). Slow: a local Ray instance
(127.0.0.1, 1 CPU, small object store) with one replica of the shipped demo pack answers
concurrent HTTP requests exactly as ``TTLoRAMoE.predict`` does in this process."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("ray.serve")

from ttmoe_core.moe import MoEError  # noqa: E402
from ttmoe_core.services import ray_serve  # noqa: E402


class Recording:
    """``predict`` stand-in: answers each row with its text and options, records each call;
    rows reading "bad" fail the whole call."""

    def __init__(self):
        self.calls = []

    def predict(self, texts, pairs, expert=None, abstain=False):
        self.calls.append((list(texts), expert, abstain))
        if "bad" in texts:
            raise MoEError("a bad row")
        return [{"text": t, "pair": p, "expert": expert, "abstain": abstain}
                for t, p in zip(texts, pairs)]


def test_jobs_share_one_call_per_option_group_and_keep_their_order():
    fake = Recording()
    jobs = [(["a1", "a2"], ["p", None], (None, False)), (["b1"], [None], ("sst2", False)),
            (["c1"], [None], (None, False)), (["d1", "d2"], [None, "q"], ("sst2", False))]
    out = ray_serve.answer_jobs(fake, jobs)
    assert [[row["text"] for row in answers] for answers in out] == [
        ["a1", "a2"], ["b1"], ["c1"], ["d1", "d2"]]
    assert [row["pair"] for row in out[3]] == [None, "q"] and out[1][0]["expert"] == "sst2"
    assert fake.calls == [(["a1", "a2", "c1"], None, False), (["b1", "d1", "d2"], "sst2", False)]


def test_a_failing_job_fails_alone():
    fake = Recording()
    jobs = [(["ok"], [None], (None, True)), (["bad"], [None], (None, True)),
            (["fine"], [None], (None, True))]
    out = ray_serve.answer_jobs(fake, jobs)
    assert isinstance(out[1], MoEError)
    assert out[0][0]["text"] == "ok" and out[2][0]["text"] == "fine" and out[0][0]["abstain"]
    assert len(fake.calls) == 1 + 3                      # the shared call, then each alone


def test_app_builder_reads_serve_run_arguments():
    with pytest.raises(ValueError, match="pack=DIR"):
        ray_serve.app_builder({"num_replicas": "2"})
    with pytest.raises(ValueError, match="unknown"):
        ray_serve.app_builder({"pack": "assets/demo", "replicas": "2"})


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _post(port: int, body: bytes) -> tuple[int, dict]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=120) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.slow
def test_one_replica_on_local_ray_answers_as_predict(embedded):
    import ray
    from ray import serve

    from ttmoe_core.moe import TTLoRAMoE
    from ttmoe_core.services.workspace import default_pack

    pack = str(default_pack())
    local = TTLoRAMoE.from_pack(pack, backbone=embedded)
    requests = [({"rows": [{"text": "I loved every minute of it."},
                           {"text": "A man is sleeping.", "text_pair": "Nobody sleeps."}]}, {}),
                ({"text": "Him and me went to the store."}, {}),
                ({"text": "What is the capital?", "text_pair": "Paris is the capital.",
                  "expert": "qnli"}, {"expert": "qnli"}),
                ({"rows": [{"text": "The plot made no sense."}], "abstain": True},
                 {"abstain": True})]
    port = _free_port()
    ray.init(num_cpus=1, object_store_memory=80 * 2**20, include_dashboard=False,
             log_to_driver=False, configure_logging=False, _node_ip_address="127.0.0.1")
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(ray_serve.build_app(pack, num_cpus=1, batch_wait_timeout_s=0.05),
                  blocking=False)
        with ThreadPoolExecutor(len(requests)) as workers:   # concurrent: coalesced in batches
            answers = list(workers.map(lambda r: _post(port, json.dumps(r[0]).encode()),
                                       requests))
        bad_json = _post(port, b"{not json")
        unknown = _post(port, json.dumps({"text": "hi", "expert": "nope"}).encode())
    finally:
        serve.shutdown()
        ray.shutdown()
    for (body, options), (status, got) in zip(requests, answers):
        rows = body.get("rows") or [{"text": body["text"], "text_pair": body.get("text_pair")}]
        expected = local.predict([r["text"] for r in rows], [r.get("text_pair") for r in rows],
                                 **options)
        assert status == 200 and len(got["results"]) == len(expected)
        for row, ref in zip(got["results"], expected):
            assert {k: row[k] for k in ("text", "text_pair", "expert", "task", "label",
                                        "truncated", "in_pool")} == {
                k: ref[k] for k in ("text", "text_pair", "expert", "task", "label",
                                    "truncated", "in_pool")}
            for key in ("router_probs", "label_probs"):
                assert row[key].keys() == ref[key].keys()
                assert list(row[key].values()) == pytest.approx(list(ref[key].values()), abs=1e-5)
            assert row["pool_score"] == pytest.approx(ref["pool_score"], abs=1e-4)
    assert bad_json[0] == 400 and "not JSON" in bad_json[1]["error"]
    assert unknown[0] == 422 and "unknown expert" in unknown[1]["error"]
