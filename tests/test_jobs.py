"""Background jobs: results, progress, cancel, failures, the registry, the router job."""

from __future__ import annotations

import threading
import time

import torch

from ttmoe_core import jobs, router, store, tt
from ttmoe_core.backbone import BackboneInfo
from ttmoe_core.experts import Expert, ExpertConfig
from ttmoe_core.router import RouterReport
from ttmoe_core.workspace import Workspace


def test_job_finishes_with_result_and_ordered_progress():
    def work(job, n, scale=1):
        for i in range(n):
            job.report(step=i + 1, total=n)
        return n * scale

    job = jobs.Job(work, 3, scale=10)
    assert job.wait(10)
    assert job.status == "done" and job.result == 30 and job.error is None
    assert [e["step"] for e in job.events] == [1, 2, 3]
    assert all(e["t"] >= 0 for e in job.events)
    assert job.last(step=2)["total"] == 3 and job.last()["step"] == 3
    assert job.finished >= job.started and not job.running


def test_cancel_stops_a_cooperative_job():
    started = threading.Event()

    def work(job):
        started.set()
        while not job.cancelled():
            time.sleep(0.01)
        raise RuntimeError("training cancelled at step 7 of 100")

    job = jobs.Job(work)
    assert started.wait(5) and job.running and not job.wait(0.05)
    job.cancel()
    assert job.wait(5)
    assert job.status == "cancelled" and job.error == "training cancelled at step 7 of 100"


def test_a_job_that_returns_after_cancel_counts_as_cancelled():
    gate = threading.Event()
    job = jobs.Job(lambda job: gate.wait(5) and "partial")
    job.cancel()
    gate.set()
    assert job.wait(5) and job.status == "cancelled" and job.result == "partial"


def test_exception_fails_the_job_with_one_line():
    def bad(job):
        raise ValueError("shape 16,8 does not fit\nsecond line")

    job = jobs.Job(bad)
    assert job.wait(5)
    assert job.status == "failed" and job.error == "shape 16,8 does not fit"


def test_unexpected_exception_names_its_type():
    job = jobs.Job(lambda job: {}["missing"])
    assert job.wait(5)
    assert job.status == "failed" and job.error == "KeyError: 'missing'"


def test_registry_keeps_jobs_by_kind_newest_first():
    registry = jobs.JobRegistry()
    gate = threading.Event()
    first = registry.submit("me", "train", "first", lambda job: 1)
    time.sleep(0.01)
    second = registry.submit("me", "train", "second", lambda job: gate.wait(5))
    other = registry.submit("me", "router", "r", lambda job: 2)
    assert registry.get("me", first.id) is first and registry.get("me", "nope") is None
    assert registry.get("me", None) is None
    assert [label for _, label in registry.list("me", "train")] == ["second", "first"]
    assert len(registry.list("me")) == 3
    assert registry.running("me", "train") == [second]
    registry.remove("me", second.id)  # a running job is cancelled when forgotten
    assert second.cancelled() and registry.get("me", second.id) is None
    gate.set()
    assert second.wait(5) and other.wait(5) and first.wait(5)


def test_a_job_is_visible_to_and_cancellable_by_its_owner_only():
    registry = jobs.JobRegistry()
    gate = threading.Event()
    mine = registry.submit("session-a", "train", "mine", lambda job: gate.wait(5))
    theirs = registry.submit("session-b", "train", "theirs", lambda job: gate.wait(5))
    assert registry.get("session-a", mine.id) is mine
    assert registry.get("session-b", mine.id) is None
    assert [label for _, label in registry.list("session-b")] == ["theirs"]
    assert registry.running("session-a", "train") == [mine]
    assert registry.list("session-c") == [] and registry.running("session-c") == []
    assert not registry.cancel("session-b", mine.id) and not mine.cancelled()
    registry.remove("session-b", mine.id)
    assert registry.get("session-a", mine.id) is mine and not mine.cancelled()
    assert registry.cancel("session-a", mine.id) and mine.cancelled()
    assert not theirs.cancelled()
    gate.set()
    assert mine.wait(5) and theirs.wait(5)
    assert mine.status == "cancelled" and theirs.status == "done"


# ----------------------------------------------------------------------------- router job


def _expert(name: str, fingerprint: str = "f" * 64, task: str = "sst2") -> Expert:
    """A tiny valid TT-LoRA expert (hidden size 8, one layer) without any model."""
    config = ExpertConfig(task=task, rank=2, targets=["query"],
                          shapes={"query": [2, 4, 4, 2]}).resolved()
    cores = tt.core_shapes([2, 4], [4, 2], 2)
    tensors = {f"encoder.layer.0.attention.self.query.cores.{k}": torch.randn(shape)
               for k, shape in enumerate(cores)}
    tensors.update({"head.weight": torch.randn(2, 8), "head.bias": torch.zeros(2)})
    return Expert(name=name, config=config, label_names=["negative", "positive"], tensors=tensors,
                  base=BackboneInfo("tiny", "bert", 8, 1, fingerprint),
                  tt_layout={"query": {"in_factors": [2, 4], "out_factors": [4, 2]}},
                  metrics={"accuracy": 0.5}, created="2026-01-01T00:00:00+00:00")


def test_a_failed_router_job_removes_the_pack_it_made(tmp_path):
    folders = [store.save_expert(_expert(n, task=t), tmp_path / n)
               for n, t in (("a", "sst2"), ("b", "from_my_file"))]
    ws = Workspace(tmp_path)
    job = jobs.Job(jobs.train_router_job, None, [0], None, folders, ws, "p", 5, 5)
    assert job.wait(30)
    assert job.status == "failed" and "from_my_file" in job.error
    assert [e["stage"] for e in job.events][:2] == ["building pack", "building pack"]
    assert not ws.pack_dir("p").exists() and list(ws.packs_root.iterdir()) == []


def test_save_trained_router_stores_metrics_and_date(tmp_path):
    ws = Workspace(tmp_path)
    experts = ws.build_pack("p", [_expert("a"), _expert("b", task="cola")])
    results = [{"layer": k, "cost": k / 2, "report": RouterReport(
        accuracy=0.5 + k / 4, confusion=[[1, 1], [0, 2]], per_task={"a": 0.5, "b": 1.0}, rows=4,
        history=[{"epoch": 1, "loss": 0.7}]), "router": router.build_router(
            router.RouterConfig(variant="linear", layer=0), 2, hidden_size=8, num_layers=1)}
        for k in (0, 1)]
    result = {"workspace": ws, "pack_name": "p", "results": results, "names": ["a", "b"],
              "train_rows": 10, "held_out_rows": 4, "sources": {"a": "sst2 validation"},
              "base": experts[0].base, "created": "2026-01-01T00:00:00+00:00"}
    path = jobs.save_trained_router(result, 1, {"built_by": "test"})
    pack = store.load_pack(path)
    assert pack.router_metrics == {"accuracy": 0.75, "confusion": [[1, 1], [0, 2]],
                                   "per_task": {"a": 0.5, "b": 1.0}, "rows": 4, "train_rows": 10,
                                   "held_out_rows": 4, "sources": {"a": "sst2 validation"},
                                   "per_layer": {"0": 0.5, "1": 0.75},
                                   "cost_fraction_of_pass": 0.5}
    assert pack.manifest["created"] == result["created"] and pack.manifest["built_by"] == "test"


def test_an_expert_job_checks_its_target_before_training(tmp_path):
    ws = Workspace(tmp_path)
    (tmp_path / "notes").mkdir()
    for name, replace, message in (("packs", False, "packs"), ("notes", False, "already exists"),
                                   ("notes", True, "not a valid expert"), ("../x", False, "valid name")):
        job = jobs.Job(jobs.train_expert_job, ExpertConfig(task="sst2"), None, ws, name, replace)
        assert job.wait(10) and job.status == "failed" and message in job.error, job.error
        assert job.events == []          # failed before loading any data
