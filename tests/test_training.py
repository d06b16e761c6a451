"""Tests of ttmoe_core.training and ttmoe_core.checkpoint: the hold-out split, the learning-rate
schedules, early stopping keeping the best weights, and resuming a run (cancelled, or killed
after a periodic checkpoint) to exactly the result of an uninterrupted one: on a toy model and
through ``experts.train_expert`` on tiny BERT (TT-LoRA and PEFT LoRA)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from ttmoe_core import experts, tasks
from ttmoe_core.experts import loop as training
from ttmoe_core.experts.checkpoint import Checkpointer, CheckpointError
from ttmoe_core.runtime import rng

# ----------------------------------------------------------------------------- pure parts


def test_holdout_split_is_seeded_disjoint_and_bounded():
    train, held = training.holdout_split(100, 0.1, None, seed=3)
    assert len(held) == 10 and len(train) == 90
    assert sorted(train + held) == list(range(100))
    assert training.holdout_split(100, 0.1, None, seed=3) == (train, held)
    assert training.holdout_split(100, 0.1, None, seed=4)[1] != held
    assert len(training.holdout_split(100, 0.5, 7, seed=0)[1]) == 7          # the limit caps it
    assert training.holdout_split(100, 0.0, None, seed=0) == (list(range(100)), [])
    assert training.holdout_split(3, 0.1, None, seed=0) == ([0, 1, 2], [])    # rounds to 0 rows


def test_lr_factor_schedules():
    warm, steps = 10, 110
    for name in training.SCHEDULES:
        assert training.lr_factor(name, 0, steps, warm) == pytest.approx(0.1)
        assert training.lr_factor(name, 9, steps, warm) == pytest.approx(1.0)
    assert training.lr_factor("constant", 100, steps, warm) == 1.0
    assert training.lr_factor("linear", 60, steps, warm) == pytest.approx(0.5)
    assert training.lr_factor("cosine", 60, steps, warm) == pytest.approx(0.5)
    assert training.lr_factor("cosine", 35, steps, warm) == pytest.approx(
        0.5 * (1 + math.cos(math.pi * 0.25)))
    assert training.lr_factor("linear", steps, steps, warm) == 0.0
    with pytest.raises(ValueError, match="unknown schedule"):
        training.lr_factor("step", 20, steps, warm)


# ----------------------------------------------------------------------------- toy loop


class Toy(nn.Module):
    """y = head(dropout(w x)): dropout masks from the run's generator."""

    def __init__(self, generator: torch.Generator):
        super().__init__()
        self.encoder = nn.Identity()
        with rng.drawing_from(generator):
            self.body = nn.Linear(6, 6)
            self.head = nn.Linear(6, 3)
        self.dropout = rng.Dropout(0.3, generator)

    def forward(self, x):
        return self.head(self.dropout(self.body(self.encoder(x))))


@dataclass
class Loop:
    steps: int = 23
    batch_size: int = 5
    lr: float = 1e-2
    warmup_fraction: float = 0.1
    weight_decay: float = 0.01
    schedule: str = "cosine"
    eval_every: int = 4
    patience: int = 0
    min_steps: int = 0


X = torch.randn(37, 6, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 3, (37,), generator=torch.Generator().manual_seed(2))


def _toy_run(config, checkpoint=None, should_stop=None, fail_at=None, holdout=True):
    generator = torch.Generator().manual_seed(0)
    model = Toy(generator)
    calls = []

    def batch_loss(rows):
        calls.append(rows)
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt("killed")
        return training.task_loss(model(X[rows]), Y[rows], False)

    def evaluate():
        model.eval()
        with torch.no_grad():
            return {"accuracy": float((model(X).argmax(-1) == Y).float().mean())}

    history = training.fit(model, batch_loss, len(X), config, generator, log_every=3,
                           should_stop=should_stop, checkpoint=checkpoint,
                           holdout=training.HoldOut(evaluate, "accuracy") if holdout else None,
                           lengths=[int(v) for v in (X[:, 0] * 10).abs().long() + 1])
    return model, history, calls


def _same(a: nn.Module, b: nn.Module) -> None:
    for (name, p), (_, q) in zip(a.named_parameters(), b.named_parameters()):
        assert torch.equal(p, q), name


def _strip(history):
    return [{k: v for k, v in h.items() if k not in ("examples_per_s", "elapsed_s", "cpu_s")}
            for h in history]


def test_early_stopping_keeps_the_best_weights():
    scores = iter([0.2, 0.6, 0.5, 0.6, 0.4, 0.9])
    snapshots = {}
    generator = torch.Generator().manual_seed(0)
    model = Toy(generator)

    def evaluate():
        return {"accuracy": next(scores)}

    def progress(event):
        if event.holdout is not None:
            snapshots[event.step] = {n: p.detach().clone() for n, p in model.named_parameters()}

    history = training.fit(model, lambda rows: training.task_loss(model(X[rows]), Y[rows], False),
                           len(X), Loop(steps=100, patience=3), generator, progress=progress,
                           holdout=training.HoldOut(evaluate, "accuracy"))
    evals = [h for h in history if "holdout" in h]
    # 0.6 at step 8 is the best; 0.5, 0.6 (not better), 0.4: three evaluations without gain
    assert [h["step"] for h in evals] == [4, 8, 12, 16, 20]
    assert [h["best"] for h in evals] == [True, True, False, False, False]
    assert history[-1]["step"] == 20
    for name, p in model.named_parameters():
        assert torch.equal(p, snapshots[8][name]), name
    assert training.summary(history) == {"steps_run": 20, "best_step": 8, "evaluations": 5,
                                         "holdout_accuracy": 0.6}


def test_min_steps_delays_early_stopping():
    scores = iter([0.6] + [0.1] * 20)
    generator = torch.Generator().manual_seed(0)
    model = Toy(generator)
    history = training.fit(model, lambda rows: training.task_loss(model(X[rows]), Y[rows], False),
                           len(X), Loop(steps=100, patience=2, min_steps=30), generator,
                           holdout=training.HoldOut(lambda: {"accuracy": next(scores)}, "accuracy"))
    assert history[-1]["step"] == 32          # would have stopped at 12 without min_steps


def test_cancelled_run_resumes_to_the_uninterrupted_result(tmp_path):
    whole, whole_history, whole_calls = _toy_run(Loop())
    asked = []

    def stop_at_11():
        asked.append(1)
        return len(asked) == 12                 # asked before step 12: 11 steps done

    ckpt = Checkpointer(tmp_path / "run", every=0, fingerprint={"seed": 0})
    with pytest.raises(training.TrainingError, match="cancelled at step 11"):
        _toy_run(Loop(), checkpoint=ckpt, should_stop=stop_at_11)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    assert state["loop"]["step"] == 11 and state["fingerprint"] == {"seed": 0}
    resumed, history, calls = _toy_run(Loop(), checkpoint=Checkpointer(
        tmp_path / "run", resume=True, fingerprint={"seed": 0}))
    _same(whole, resumed)
    assert calls == whole_calls[11:]             # the same batches, in the same order
    assert _strip(history) == _strip(whole_history)


def test_killed_run_resumes_from_its_last_periodic_checkpoint(tmp_path):
    whole, whole_history, whole_calls = _toy_run(Loop(patience=2, steps=40))
    with pytest.raises(KeyboardInterrupt):
        _toy_run(Loop(patience=2, steps=40), checkpoint=Checkpointer(tmp_path / "run", every=5),
                 fail_at=13)
    resumed, history, calls = _toy_run(Loop(patience=2, steps=40), checkpoint=Checkpointer(
        tmp_path / "run", every=5, resume=True))
    assert calls == whole_calls[10:]
    _same(whole, resumed)
    assert _strip(history) == _strip(whole_history)


def test_resume_without_a_checkpoint_starts_fresh_and_refuses_another_runs(tmp_path):
    whole, _, _ = _toy_run(Loop(), holdout=False)
    fresh, _, _ = _toy_run(Loop(), checkpoint=Checkpointer(tmp_path / "none", resume=True),
                           holdout=False)
    _same(whole, fresh)
    _toy_run(Loop(steps=5), checkpoint=Checkpointer(tmp_path / "a", every=5,
                                                    fingerprint={"lr": 1}))
    with pytest.raises(CheckpointError, match="differ in lr"):
        Checkpointer(tmp_path / "a", resume=True, fingerprint={"lr": 2}).load()
    # a setting added later (here "dtype") that an older checkpoint lacks reads as its old value
    newer = {"lr": 1, "dtype": "float32"}
    assert Checkpointer(tmp_path / "a", resume=True, fingerprint=newer,
                        added={"dtype": "float32"}).load() is not None
    with pytest.raises(CheckpointError, match="differ in dtype"):
        Checkpointer(tmp_path / "a", resume=True, fingerprint={"lr": 1, "dtype": "bfloat16"},
                     added={"dtype": "float32"}).load()
    with pytest.raises(CheckpointError, match="differ in dtype"):
        Checkpointer(tmp_path / "a", resume=True, fingerprint=newer).load()
    (tmp_path / "a" / "state.json").write_text("[1, 2")
    with pytest.raises(CheckpointError, match="cannot be read"):
        Checkpointer(tmp_path / "a", resume=True, fingerprint={"lr": 1}).load()


# ----------------------------------------------------------------------------- train_expert


@pytest.fixture(scope="module")
def sst2(samples_dir):
    return (tasks.load_task("sst2", "train", data_dir=samples_dir, limit=40),
            tasks.load_task("sst2", "validation", data_dir=samples_dir, limit=8))


@pytest.mark.parametrize("method", ["tt-lora", "lora", "adapter"])
def test_train_expert_resumes_exactly(tiny_bert, sst2, tmp_path, method):
    train, valid = sst2
    cfg = experts.ExpertConfig(task="sst2", method=method, steps=9, batch_size=4, max_length=32,
                               holdout_fraction=0.25, eval_every=3, patience=0,
                               checkpoint_every=4, lr=1e-2)
    kwargs = dict(train_data=train, eval_data=valid, log_every=1)
    whole = experts.train_expert(cfg, tiny_bert, **kwargs)
    assert whole.data["holdout_rows"] == 10 and whole.data["train_rows"] == 30
    assert whole.metrics["evaluations"] == 3 and "holdout_accuracy" in whole.metrics
    done = []                                   # steps reported; cancel once 6 are done
    with pytest.raises(experts.TrainingError, match="cancelled at step 6"):
        experts.train_expert(cfg, tiny_bert, **kwargs, checkpoint_dir=tmp_path / "ck",
                             progress=lambda e: done.append(e.step),
                             should_stop=lambda: bool(done) and done[-1] == 6)
    resumed = experts.train_expert(cfg, tiny_bert, **kwargs, checkpoint_dir=tmp_path / "ck",
                                   resume=True)
    assert set(resumed.tensors) == set(whole.tensors)
    for key, value in whole.tensors.items():
        torch.testing.assert_close(resumed.tensors[key], value, rtol=0, atol=1e-6)
    assert _strip(resumed.history) == _strip(whole.history)
    # CPU time of the loop carries over the checkpoint: steps 1-6 (first process), then 7-9
    cpu = [h["cpu_s"] for h in resumed.history]
    assert cpu == sorted(cpu) and cpu[-1] > 0 and resumed.metrics["train_cpu_seconds"] == cpu[-1]
    other = experts.ExpertConfig(**{**cfg.to_dict(), "lr": 2e-2})
    with pytest.raises(CheckpointError, match="differ in lr"):
        experts.train_expert(other, tiny_bert, **kwargs, checkpoint_dir=tmp_path / "ck",
                             resume=True)


def test_head_learning_rate(tiny_bert, sst2, tmp_path):
    """``head_lr``: None trains the head at ``lr`` (one optimizer group, as before; the same
    weights as a separate group at that rate); 0 keeps the random head frozen (the authors' set-up)
    while the cores train; a checkpoint written before the setting existed still resumes."""
    train, valid = sst2
    base = dict(task="sst2", steps=4, batch_size=4, max_length=32, holdout_fraction=0, lr=1e-2,
                init="kaiming")
    kwargs = dict(train_data=train, eval_data=valid)
    default = experts.train_expert(experts.ExpertConfig(**base), tiny_bert, **kwargs)
    same = experts.train_expert(experts.ExpertConfig(**base, head_lr=1e-2), tiny_bert, **kwargs)
    for key, value in default.tensors.items():
        torch.testing.assert_close(same.tensors[key], value, rtol=0, atol=1e-7)
    frozen = experts.train_expert(experts.ExpertConfig(**base, head_lr=0.0), tiny_bert, **kwargs)
    assert not torch.equal(frozen.tensors["head.weight"], default.tensors["head.weight"])
    cores = [k for k in frozen.tensors if ".cores." in k]
    assert any(not torch.equal(frozen.tensors[k], default.tensors[k]) for k in cores)
    start = experts.train_expert(experts.ExpertConfig(**{**base, "steps": 1, "lr": 1e-12},
                                                      head_lr=0.0), tiny_bert, **kwargs)
    torch.testing.assert_close(frozen.tensors["head.weight"], start.tensors["head.weight"],
                               rtol=0, atol=0)                  # the head never moved
    with pytest.raises(experts.ConfigError, match="head lr"):
        experts.ExpertConfig(task="sst2", head_lr=-1.0).resolved()
    assert "head_lr" in experts.CHECKPOINT_ADDED


@pytest.mark.parametrize("overrides,pattern", [
    ({"holdout_fraction": 1.0}, "hold-out fraction"), ({"eval_every": -1}, "eval every"),
    ({"patience": -2}, "patience"), ({"min_steps": -1}, "min steps"), ({"schedule": "steps"}, "schedule"),
    ({"checkpoint_every": -1}, "checkpoint every"), ({"holdout_limit": 0}, "hold-out limit")])
def test_convergence_settings_are_checked(overrides, pattern):
    with pytest.raises(experts.ConfigError, match=pattern):
        experts.ExpertConfig(task="sst2", **overrides).resolved()


# ----------------------------------------------------------------------------- report --resume


def test_report_run_reuses_finished_experts_and_checks_settings(tiny_bert, samples_dir, tmp_path):
    import dataclasses

    from ttmoe_core import report
    from ttmoe_core.report import run as report_run
    from ttmoe_core.report.experiment import Run

    budget = dataclasses.replace(report.BUDGETS["small"], steps=3, batch_size=4, max_length=32,
                                 train_rows=24, eval_rows=8)
    first = Run(budget=budget, backbone=tiny_bert, data_dir=samples_dir)
    assert report_run._work_dir(first, tmp_path / "w", False, {"settings": 1}) == {}
    trained = first.expert("sst2", "tt-lora")
    assert (tmp_path / "w" / "experts" / "sst2-tt-lora-seed0.training.json").is_file()
    (tmp_path / "w" / "experiments" / "methods.json").write_text('{"claim": 1}')
    told = []
    again = Run(budget=budget, backbone=tiny_bert, data_dir=samples_dir,
                progress=lambda stage, done, total: told.append(stage))
    assert report_run._work_dir(again, tmp_path / "w", True, {"settings": 1}) == {
        "methods": {"claim": 1}}
    kept = again.expert("sst2", "tt-lora")
    assert told == []                                       # nothing trained
    assert again.trainings[("sst2", "tt-lora", 0)] == first.trainings[("sst2", "tt-lora", 0)]
    for key, value in trained.tensors.items():
        assert torch.equal(kept.tensors[key], value)
    other = Run(budget=budget, backbone=tiny_bert, data_dir=samples_dir)
    with pytest.raises(report.ReportError, match="other settings"):
        report_run._work_dir(other, tmp_path / "w", True, {"settings": 2})
