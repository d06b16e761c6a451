"""Background jobs: results, progress, cancel, failures, the registry, the router job."""

from __future__ import annotations

import threading
import time

import torch

from ttmoe_core import routing, store, tt
from ttmoe_core.base.backbone import BackboneInfo
from ttmoe_core.experts import Expert, ExpertConfig
from ttmoe_core.routing import RouterReport
from ttmoe_core.services import jobs, workflows
from ttmoe_core.services.workspace import Workspace


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
    job = jobs.Job(workflows.train_router_job, None, [0], None, folders, ws, "p", 5, 5)
    assert job.wait(30)
    assert job.status == "failed" and "from_my_file" in job.error
    assert [e["stage"] for e in job.events][:2] == ["building pack", "building pack"]
    assert not ws.pack_dir("p").exists() and list(ws.packs_root.iterdir()) == []


def test_save_trained_router_stores_metrics_and_date(tmp_path):
    ws = Workspace(tmp_path)
    experts = ws.build_pack("p", [_expert("a"), _expert("b", task="cola")])
    results = [{"layer": k, "cost": k / 2, "report": RouterReport(
        accuracy=0.5 + k / 4, confusion=[[1, 1], [0, 2]], per_task={"a": 0.5, "b": 1.0}, rows=4,
        history=[{"epoch": 1, "loss": 0.7}]), "router": routing.build(
            routing.RouterConfig(variant="linear", layer=0), 2, hidden_size=8, num_layers=1)}
        for k in (0, 1)]
    result = {"workspace": ws, "pack_name": "p", "results": results, "names": ["a", "b"],
              "train_rows": 10, "held_out_rows": 4, "sources": {"a": "sst2 validation"},
              "base": experts[0].base, "created": "2026-01-01T00:00:00+00:00"}
    path = workflows.save_trained_router(result, 1, {"built_by": "test"})
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
        job = jobs.Job(workflows.train_expert_job, ExpertConfig(task="sst2"), None, ws, name, replace)
        assert job.wait(10) and job.status == "failed" and message in job.error, job.error
        assert job.events == []          # failed before loading any data


# ----------------------------------------------------------------------------- cancel: saved or not


def test_commit_refuses_a_later_cancel_and_the_job_ends_done():
    committed, gate = threading.Event(), threading.Event()

    def work(job):
        assert job.commit()
        committed.set()
        gate.wait(5)
        return "written"

    job = jobs.Job(work)
    assert committed.wait(5)
    assert not job.cancel() and not job.cancelled()      # too late: it is saving
    gate.set()
    assert job.wait(5) and job.status == "done" and job.result == "written"
    assert not job.cancel()                               # nor once it has ended


def test_commit_fails_after_a_cancel():
    job = jobs.Job(lambda job: (job.cancel(), job.commit())[1])
    assert job.wait(5) and job.result is False and job.status == "cancelled"


class CancelAt(jobs.Job):
    """A job whose watcher cancels it at its first event whose stage starts with ``stage``: the
    cancel lands at a known point of the run (``answers``: what each ``cancel()`` returned)."""

    def __init__(self, stage: str, fn, *args, **kwargs):
        self.stage, self.answers = stage, []
        super().__init__(fn, *args, **kwargs)

    def report(self, **fields) -> None:
        super().report(**fields)
        if str(fields.get("stage", "")).startswith(self.stage) and not self.answers:
            self.answers.append(self.cancel())


TINY_CONFIG = dict(task="sst2", rank=3, steps=2, batch_size=4, max_length=32, device="cpu",
                   train_limit=16, eval_limit=8)


def _train_job(stage: str, ws, name: str = "mine", replace: bool = False, config=None):
    from tests.tinymodels import SAMPLES, tiny_bert

    job = CancelAt(stage, workflows.train_expert_job, config or ExpertConfig(**TINY_CONFIG),
                   tiny_bert(), ws, name, replace, data_dir=SAMPLES)
    assert job.wait(120)
    return job


def test_cancel_during_evaluation_saves_nothing(tmp_path):
    ws = Workspace(tmp_path)
    job = _train_job("evaluating", ws)
    assert job.answers == [True] and job.status == "cancelled"
    assert "cancelled during evaluation" in job.error
    final = job.events[-1]
    assert final["stage"] == "not saved" and final["saved"] is False and final["path"] is None
    assert "nothing was saved" in final["reason"]
    assert not (tmp_path / "mine").exists() and list(tmp_path.iterdir()) == []


def test_cancel_during_evaluation_leaves_the_replaced_expert_as_it_was(tmp_path):
    from tests.tinymodels import tree_hashes

    ws = Workspace(tmp_path)
    old = ws.save_expert(_expert("mine"))
    before = tree_hashes(old)
    job = _train_job("evaluating", ws, replace=True)
    assert job.status == "cancelled" and tree_hashes(old) == before
    assert f"the expert at {old} is unchanged" in job.events[-1]["reason"]


def test_a_cancel_while_saving_is_refused_and_the_job_says_where_it_saved(tmp_path):
    from tests.tinymodels import SAMPLES, tiny_bert

    class ClickDuringSave(Workspace):
        job: jobs.Job | None = None

        def save_expert(self, expert, replace=False):
            assert ready.wait(30)
            answers.append(self.job.cancel())        # the Cancel button, pressed while saving
            return super().save_expert(expert, replace)

    ready, answers = threading.Event(), []
    ws = ClickDuringSave(tmp_path)
    job = jobs.Job(workflows.train_expert_job, ExpertConfig(**TINY_CONFIG), tiny_bert(), ws, "mine",
                   data_dir=SAMPLES)
    ws.job = job
    ready.set()
    assert job.wait(120)
    assert answers == [False] and job.status == "done"
    final = job.events[-1]
    assert final == {**final, "stage": "saved", "saved": True, "path": str(tmp_path / "mine")}
    assert store.load_expert(final["path"]).name == "mine"


def test_a_training_cancel_is_reported_as_not_saved(tmp_path):
    job = _train_job("training", Workspace(tmp_path))
    assert job.status == "cancelled" and "cancelled at step" in job.error
    assert job.events[-1]["saved"] is False
    # only the run's checkpoint stays (hidden from the workspace's experts), for a resume
    assert [p.name for p in tmp_path.iterdir()] == [workflows.CHECKPOINTS]
    assert Workspace(tmp_path).list_experts() == ([], {})


def test_a_cancelled_training_job_resumes_to_the_uninterrupted_result(tmp_path):
    from tests.tinymodels import SAMPLES, tiny_bert

    config = ExpertConfig(**{**TINY_CONFIG, "steps": 6, "checkpoint_every": 2, "eval_every": 2})
    whole = jobs.Job(workflows.train_expert_job, config, tiny_bert(), Workspace(tmp_path / "a"), "mine",
                     data_dir=SAMPLES)
    assert whole.wait(120) and whole.status == "done"

    class StopAtStep3(jobs.Job):
        def report(self, **fields) -> None:
            super().report(**fields)
            if fields.get("step") == 3:
                self.cancel()

    ws = Workspace(tmp_path / "b")
    first = StopAtStep3(workflows.train_expert_job, config, tiny_bert(), ws, "mine", data_dir=SAMPLES)
    assert first.wait(120) and first.status == "cancelled" and "at step 3" in first.error
    again = jobs.Job(workflows.train_expert_job, config, tiny_bert(), ws, "mine", data_dir=SAMPLES)
    assert again.wait(120) and again.status == "done"
    steps = [e["step"] for e in again.events if e.get("stage") == "training" and "loss" in e]
    assert steps and min(steps) > 3                              # continued, not restarted
    a = store.load_expert(tmp_path / "a" / "mine")
    b = store.load_expert(tmp_path / "b" / "mine")
    for key, value in a.tensors.items():
        torch.testing.assert_close(b.tensors[key], value, rtol=0, atol=1e-6)
    assert not workflows.job_checkpoint(ws.root, "mine", config.resolved()).exists()  # saved: removed
    assert not list((ws.root / workflows.CHECKPOINTS).iterdir())


def test_app_checkpoints_are_keyed_by_the_job_and_held_while_it_runs(tmp_path):
    """A second session training the same name never resumes or deletes the first one's run."""
    config = ExpertConfig(**TINY_CONFIG).resolved()
    other = ExpertConfig(**{**TINY_CONFIG, "seed": 7}).resolved()
    folder = workflows.job_checkpoint(tmp_path, "mine", config)
    assert folder != workflows.job_checkpoint(tmp_path, "mine", other)
    assert folder.parent == tmp_path / workflows.CHECKPOINTS and folder.name.startswith("mine-")
    from tests.threads import held_elsewhere
    from tests.tinymodels import SAMPLES, tiny_bert

    with held_elsewhere(folder):                     # what the first session's running job holds
        second = jobs.Job(workflows.train_expert_job, config, tiny_bert(), Workspace(tmp_path),
                          "mine", data_dir=SAMPLES)
        assert second.wait(120) and second.status == "failed"
        assert "another job is training 'mine'" in second.error


def _router_job(tmp_path, stage: str):
    from tests.tinymodels import SAMPLES, tiny_bert, tiny_expert

    bb = tiny_bert()
    folders = [store.save_expert(tiny_expert(bb, task, seed=i), tmp_path / "in" / task)
               for i, task in enumerate(("sst2", "rte"))]
    ws = Workspace(tmp_path / "ws")
    config = routing.RouterConfig(variant="mlp", layer=1, hidden=16, epochs=4, batch_size=32,
                                  max_length=32)
    job = CancelAt(stage, workflows.train_router_job, config, [0, 1], bb, folders, ws, "p", 12, 6,
                   data_dir=SAMPLES)
    assert job.wait(120)
    return job, ws


def test_a_router_cancel_during_training_is_honoured_and_writes_no_pack(tmp_path):
    job, ws = _router_job(tmp_path, "training layer")
    assert job.answers == [True] and job.status == "cancelled"
    assert "cancelled during training layer 0" in job.error
    stages = [e["stage"] for e in job.events]
    assert stages[-2] == "training layer 0" and stages[-1] == "not saved"
    assert "no pack was written" in job.events[-1]["reason"]
    assert not ws.pack_dir("p").exists() and list(ws.packs_root.iterdir()) == []


def test_a_finished_router_job_says_what_it_wrote(tmp_path):
    job, ws = _router_job(tmp_path, "no such stage")
    assert job.status == "done", job.error
    final = job.events[-1]
    assert final["stage"] == "saved" and final["path"] == str(ws.pack_dir("p"))
    assert "no router yet" in final["note"]
    assert [e["done"] for e in job.events if e["stage"] == "training layer 1"] == [1, 2, 3, 4]
    assert store.load_pack(final["path"]).router_config is None


# ----------------------------------------------------------------------------- limits and the queue
def _blocker(gate: threading.Event):
    def run(job):
        job.report(stage="working")
        gate.wait(10)
        return "ok"
    return run


def test_jobs_beyond_an_owners_limit_wait_in_order_and_start_as_others_end():
    registry = jobs.JobRegistry(per_owner=1, total=None)
    gates = [threading.Event() for _ in range(3)]
    first, second, third = (registry.submit("me", "train", f"j{i}", _blocker(g)) for i, g in enumerate(gates))
    other = registry.submit("you", "train", "theirs", _blocker(threading.Event()))
    assert first.status == "running" and other.status == "running"      # one each
    assert second.status == third.status == "queued"
    assert "1 of your jobs are running (at most 1 at once)" in second.last(stage="queued")["reason"]
    gates[0].set()
    assert first.wait(5)
    deadline = time.time() + 5
    while second.status != "running" and time.time() < deadline:
        time.sleep(0.01)
    assert second.status == "running" and third.status == "queued"     # oldest first
    gates[1].set(), gates[2].set()
    assert second.wait(5) and third.wait(5)
    assert (second.result, third.result) == ("ok", "ok")
    other.cancel()


def test_the_servers_limit_counts_every_owner():
    registry = jobs.JobRegistry(per_owner=None, total=2)
    gate = threading.Event()
    running = [registry.submit(who, "train", who, _blocker(gate)) for who in ("a", "b")]
    waiting = registry.submit("c", "train", "c", _blocker(gate))
    assert [j.status for j in running] == ["running", "running"] and waiting.status == "queued"
    assert "2 jobs are running on this server (at most 2 at once)" in waiting.last(stage="queued")["reason"]
    gate.set()
    assert waiting.wait(5) and waiting.result == "ok"


def test_a_queued_job_cancelled_never_runs():
    registry = jobs.JobRegistry(per_owner=1)
    gate, ran = threading.Event(), []
    first = registry.submit("me", "train", "first", _blocker(gate))
    queued = registry.submit("me", "train", "queued", lambda job: ran.append(1))
    assert queued.status == "queued" and registry.cancel("me", queued.id)
    assert queued.wait(1) and queued.status == "cancelled" and not queued.running
    gate.set()
    assert first.wait(5)
    time.sleep(0.1)
    assert ran == []


def test_without_limits_every_job_starts_at_once():
    registry = jobs.JobRegistry()
    gate = threading.Event()
    started = [registry.submit("me", "train", str(i), _blocker(gate)) for i in range(5)]
    assert all(j.status == "running" for j in started)
    gate.set()
    assert all(j.wait(5) for j in started)
