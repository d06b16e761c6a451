"""Background jobs: results, progress, cancel, failures, the registry, the router job."""

from __future__ import annotations

import threading
import time

import torch

from ttmoe_core import jobs, store, tt
from ttmoe_core.backbone import BackboneInfo
from ttmoe_core.experts import Expert, ExpertConfig


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
    first = registry.submit("train", "first", lambda job: 1)
    time.sleep(0.01)
    second = registry.submit("train", "second", lambda job: gate.wait(5))
    other = registry.submit("router", "r", lambda job: 2)
    assert registry.get(first.id) is first and registry.get("nope") is None
    assert registry.get(None) is None
    assert [label for _, label in registry.list("train")] == ["second", "first"]
    assert len(registry.list()) == 3
    assert registry.running("train") == [second]
    registry.remove(second.id)  # a running job is cancelled when forgotten
    assert second.cancelled() and registry.get(second.id) is None
    gate.set()
    assert second.wait(5) and other.wait(5) and first.wait(5)


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
    pack = tmp_path / "packs" / "p"
    job = jobs.Job(jobs.train_router_job, None, [0], None, folders, pack, 5, 5)
    assert job.wait(30)
    assert job.status == "failed" and "from_my_file" in job.error
    assert [e["stage"] for e in job.events][:2] == ["building pack", "building pack"]
    assert not pack.exists()
