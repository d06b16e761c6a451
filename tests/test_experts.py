"""Tests of ttmoe_core.experts: config defaults and validation, training on tiny models (progress,
cancel, NaN, frozen base), rebuilding an expert against a dense merged-weight reference,
evaluation, and one slow integration run on the embedded MiniLM."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tests.tinymodels import sample_rows
from ttmoe_core import adapters, experts, store, tasks, tt
from ttmoe_core.experts import ConfigError, ExpertConfig, TrainingError


def _config(**overrides) -> ExpertConfig:
    settings = dict(task="sst2", steps=3, batch_size=4, max_length=32, eval_limit=8, train_limit=16)
    settings.update(overrides)
    return ExpertConfig(**settings)


@pytest.fixture(scope="module")
def sst2(samples_dir):
    return sample_rows(samples_dir, "sst2", 16, 8)


@pytest.fixture(scope="module")
def trained(tiny_bert, sst2):
    """A TT-LoRA expert trained 4 steps on tiny BERT, with the progress events it reported and
    the base model's state before training."""
    train, valid = sst2
    before = {k: v.clone() for k, v in tiny_bert.model.state_dict().items()}
    events = []
    expert = experts.train_expert(_config(steps=4), tiny_bert, train_data=train, eval_data=valid,
                                  progress=events.append, log_every=1)
    return expert, events, before


# ----------------------------------------------------------------------------- config


@pytest.mark.parametrize("method,rank,alpha,lr", [("tt-lora", 5, 16.0, 5e-3), ("lora", 16, 8.0, 5e-4)])
def test_resolved_fills_paper_defaults(method, rank, alpha, lr):
    cfg = ExpertConfig(task="sst2", method=method)
    resolved = cfg.resolved()
    assert (resolved.rank, resolved.alpha, resolved.lr) == (rank, alpha, lr)
    assert cfg.rank is None and cfg.alpha is None and cfg.lr is None     # original untouched
    explicit = ExpertConfig(task="sst2", method=method, rank=3, alpha=2, lr=1e-3).resolved()
    assert (explicit.rank, explicit.alpha, explicit.lr) == (3, 2.0, 1e-3)
    assert isinstance(explicit.alpha, float)


@pytest.mark.parametrize("overrides,pattern", [
    ({"method": "adapterx"}, "unknown method"),
    ({"rank": 0}, "rank"),
    ({"rank": -2}, "rank"),
    ({"lr": 0.0}, "lr"),
    ({"lr": -1e-3}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"lr": float("inf")}, "lr"),
    ({"steps": 0}, "steps"),
    ({"batch_size": 0}, "batch"),
    ({"max_length": 4}, "max length"),
    ({"init": "xavier"}, "init"),
    ({"warmup_fraction": 1.0}, "warmup"),
])
def test_resolved_rejects_bad_values(overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        ExpertConfig(task="sst2", **overrides).resolved()


def test_bad_shape_product_is_a_config_error(tiny_bert, sst2):
    bad = ExpertConfig(task="sst2", shapes={"query": [4, 4, 4, 4]})      # 256 != 48 * 48
    with pytest.raises(ConfigError, match="query"):
        experts.build_expert_model(bad, tiny_bert, num_labels=2)
    train, valid = sst2
    with pytest.raises(ConfigError, match="query"):
        experts.train_expert(_config(shapes={"query": [6, 8, 8, 5]}), tiny_bert, train_data=train,
                             eval_data=valid)


def test_from_dict_round_trip_and_rejects_unknown_keys():
    cfg = ExpertConfig(task="rte", method="lora", rank=4, shapes={"query": [8, 6, 6, 8]}, seed=3)
    assert ExpertConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ConfigError, match="rnak"):
        ExpertConfig.from_dict({"task": "rte", "rnak": 4})
    with pytest.raises(ConfigError, match="task"):
        ExpertConfig.from_dict({"rank": 4})


# ----------------------------------------------------------------------------- training


def test_progress_events(trained):
    expert, events, _ = trained
    assert [e.step for e in events] == [1, 2, 3, 4]
    assert all(e.total_steps == 4 for e in events)
    assert all(math.isfinite(e.loss) and e.loss > 0 for e in events)
    assert all(e.examples_per_s > 0 for e in events)
    assert all(a.elapsed_s <= b.elapsed_s for a, b in zip(events, events[1:]))
    assert [h["step"] for h in expert.history] == [1, 2, 3, 4]
    assert [h["loss"] for h in expert.history] == [e.loss for e in events]


def test_training_leaves_base_model_untouched(trained, tiny_bert):
    expert, _, before = trained
    after = tiny_bert.model.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not any(isinstance(m, adapters.TTLoRALinear) for m in tiny_bert.model.modules())
    assert not any(p.requires_grad for p in tiny_bert.model.parameters())
    assert expert.base == tiny_bert.info


def test_only_cores_and_head_are_trained(trained, tiny_bert):
    expert, _, _ = trained
    cfg = expert.config
    assert cfg.targets == ["query", "value"] and cfg.rank == 5 and cfg.init == "zero"
    core_keys = {k for k in expert.tensors if ".cores." in k}
    assert set(expert.tensors) == core_keys | {"head.weight", "head.bias"}
    assert expert.tensors["head.weight"].shape == (2, tiny_bert.info.hidden_size)
    # the cores moved away from their (seeded) initial values, including the zero-init last core
    init = experts.build_expert_model(cfg, tiny_bert, num_labels=2,
                                      generator=torch.Generator().manual_seed(cfg.seed))
    init_cores = adapters.expert_cores(init.encoder)
    assert set(init_cores) == core_keys
    assert all(not torch.equal(expert.tensors[k], init_cores[k]) for k in core_keys)
    # rebuilt model: every parameter except cores and head equals the base model's
    model = experts.build_expert_model(expert, tiny_bert)
    base = tiny_bert.model.state_dict()
    for name, value in model.encoder.state_dict().items():
        if ".cores." in name:
            continue
        base_name = name.replace(".base.", ".")
        assert torch.equal(value, base[base_name]), name
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {f"encoder.{k}" for k in core_keys} | {"head.weight", "head.bias"}
    assert expert.adapter_params() == sum(t.numel() for t in init_cores.values())


def test_training_is_deterministic(tiny_bert, sst2, trained):
    expert, _, _ = trained
    train, valid = sst2
    again = experts.train_expert(_config(steps=4), tiny_bert, train_data=train, eval_data=valid)
    assert all(torch.equal(again.tensors[k], v) for k, v in expert.tensors.items())


def test_should_stop_cancels(tiny_bert, sst2):
    train, valid = sst2
    calls = []

    def stop_after_two() -> bool:
        calls.append(1)
        return len(calls) > 2

    with pytest.raises(TrainingError, match="cancelled at step 2"):
        experts.train_expert(_config(steps=5), tiny_bert, train_data=train, eval_data=valid,
                             should_stop=stop_after_two)
    with pytest.raises(TrainingError, match="cancelled"):
        experts.train_expert(_config(), tiny_bert, train_data=train, eval_data=valid,
                             should_stop=lambda: True)


def test_nan_loss_raises(tiny_bert):
    texts = ["one sentence", "another sentence", "a third one", "and a fourth"]
    data = tasks.TaskData(task="stsb", split="train", texts=texts, text_pairs=list(reversed(texts)),
                          labels=[1.0, float("nan"), 2.0, 3.0], label_names=(), source="test")
    events = []
    with pytest.raises(TrainingError, match="loss became nan at step 1"):
        experts.train_expert(_config(task="stsb", batch_size=4), tiny_bert, train_data=data,
                             eval_data=data, progress=events.append, log_every=1)
    assert events == []


def test_empty_train_data_is_an_error(tiny_bert, sst2, monkeypatch):
    _, valid = sst2
    empty = valid.select([])

    def no_loading(*args, **kwargs):
        raise AssertionError("train_expert must not load data it was given")

    monkeypatch.setattr(tasks, "load_task", no_loading)
    with pytest.raises(ConfigError, match="no training rows"):
        experts.train_expert(_config(), tiny_bert, train_data=empty, eval_data=valid)


class _ToyModel(torch.nn.Module):
    """A frozen ``encoder`` + a trainable head: the shape of model ``experts.fit`` trains."""

    def __init__(self, generator: torch.Generator):
        super().__init__()
        self.encoder = torch.nn.Linear(4, 4).requires_grad_(False)
        self.head = torch.nn.Linear(4, 3)
        with torch.no_grad():
            for param in self.parameters():
                param.copy_(torch.randn(param.shape, generator=generator))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.encoder(x)))


def _toy_data(rows: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(5)
    return torch.randn(rows, 4, generator=generator), torch.randint(0, 3, (rows,), generator=generator)


def _reference_loop(model, x, y, config, generator) -> list[float]:
    """The loop ``train_expert`` and ``baselines.train_fusion`` each had before ``fit``, written
    out: AdamW, linear warm-up then decay, batches reshuffled every epoch; per-step losses."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, int(config.warmup_fraction * config.steps))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(
        (s + 1) / warmup, max(0.0, (config.steps - s) / max(1, config.steps - warmup))))
    batches: list[list[int]] = []
    while len(batches) < config.steps:
        order = torch.randperm(len(y), generator=generator).tolist()
        batches += [order[i:i + config.batch_size] for i in range(0, len(y), config.batch_size)]
    losses = []
    for rows in batches[:config.steps]:
        loss = torch.nn.functional.cross_entropy(model(x[rows]), y[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
        losses.append(loss.item())
    return losses


def test_fit_is_the_reference_loop():
    x, y = _toy_data()
    config = _config(steps=7, batch_size=4, lr=0.05, weight_decay=0.01, warmup_fraction=0.3)
    reference = _ToyModel(torch.Generator().manual_seed(1))
    losses = _reference_loop(reference, x, y, config, torch.Generator().manual_seed(2))
    model = _ToyModel(torch.Generator().manual_seed(1))
    events = []
    history = experts.fit(model, lambda rows: experts.task_loss(model(x[rows]), y[rows], False),
                          len(y), config, torch.Generator().manual_seed(2), progress=events.append,
                          log_every=1)
    assert [h["loss"] for h in history] == losses                  # exactly, step by step
    assert [h["step"] for h in history] == list(range(1, 8)) and len(events) == 7
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(),
                                                 reference.state_dict().values()))
    assert not model.training                                       # left in eval mode
    # log_every=3: the mean loss since the previous entry, at steps 3, 6 and the last one
    model = _ToyModel(torch.Generator().manual_seed(1))
    history = experts.fit(model, lambda rows: experts.task_loss(model(x[rows]), y[rows], False),
                          len(y), config, torch.Generator().manual_seed(2), log_every=3)
    assert [h["step"] for h in history] == [3, 6, 7]
    assert [h["loss"] for h in history] == pytest.approx(
        [np.mean(losses[:3]), np.mean(losses[3:6]), losses[6]], rel=1e-12)


def test_fit_trains_with_the_encoder_in_eval_mode_and_reports_errors():
    x, y = _toy_data()
    model = _ToyModel(torch.Generator().manual_seed(1))
    modes = []

    def loss_of(rows):
        modes.append((model.training, model.encoder.training))
        return experts.task_loss(model(x[rows]), y[rows], False)

    experts.fit(model, loss_of, len(y), _config(steps=2).resolved(), torch.Generator())
    assert modes == [(True, False), (True, False)]
    with pytest.raises(TrainingError, match="^fusion training cancelled at step 0 of 2$"):
        experts.fit(model, loss_of, len(y), _config(steps=2).resolved(), torch.Generator(),
                    should_stop=lambda: True, prefix="fusion ")
    with pytest.raises(TrainingError, match="^loss became nan at step 1: try again$"):
        experts.fit(model, lambda rows: torch.tensor(float("nan")), len(y),
                    _config(steps=2).resolved(), torch.Generator(), nan_hint=": try again")


def test_task_loss_regression_and_classification():
    logits = torch.tensor([[0.5], [2.0]])
    assert experts.task_loss(logits, torch.tensor([1.0, 2.0]), True).item() == pytest.approx(0.125)
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    expected = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1]))
    assert torch.equal(experts.task_loss(logits, torch.tensor([0, 1]), False), expected)


# ----------------------------------------------------------------------------- rebuild + evaluate


def test_rebuilt_expert_matches_dense_reference(trained, tiny_bert, sst2, reference_logits):
    expert, _, _ = trained
    _, valid = sst2
    model = experts.build_expert_model(expert, tiny_bert)
    first = experts.predict_logits(model, tiny_bert, valid.texts, valid.text_pairs, max_length=32)
    second = experts.predict_logits(experts.build_expert_model(expert, tiny_bert), tiny_bert,
                                    valid.texts, valid.text_pairs, max_length=32)
    assert first.shape == (len(valid), 2) and torch.equal(first, second)
    ref = reference_logits(tiny_bert, expert, valid.texts, valid.text_pairs, 32)
    torch.testing.assert_close(first, ref, rtol=1e-4, atol=1e-5)
    # the metrics recorded at the end of training are those of the rebuilt model
    result = experts.evaluate_expert(expert, tiny_bert, valid)
    assert result["metrics"]["accuracy"] == expert.metrics["accuracy"]
    assert result["confusion"] == expert.metrics["confusion"]
    assert result["predictions"] == first.argmax(-1).tolist()


def test_evaluate_model_confusion_matrix(trained, tiny_bert, samples_dir):
    expert, _, _ = trained
    data = tasks.load_task("sst2", "validation", data_dir=samples_dir, limit=40)
    model = experts.build_expert_model(expert, tiny_bert)
    result = experts.evaluate_model(model, tiny_bert, data, "sst2", max_length=32)
    confusion = np.array(result["confusion"])
    labels, preds = np.array(data.labels), np.array(result["predictions"])
    assert result["rows"] == len(data) == 40 and confusion.shape == (2, 2)
    assert confusion.sum() == len(data)
    np.testing.assert_array_equal(confusion.sum(1), np.bincount(labels, minlength=2))
    np.testing.assert_array_equal(confusion.sum(0), np.bincount(preds, minlength=2))
    assert np.trace(confusion) / confusion.sum() == pytest.approx(result["metrics"]["accuracy"])
    assert result["metrics"]["accuracy"] == pytest.approx(float((labels == preds).mean()))


def test_evaluate_expert_rejects_other_label_count(trained, tiny_bert, samples_dir):
    expert, _, _ = trained
    mnli = tasks.load_task("mnli", "validation", data_dir=samples_dir, limit=4)
    with pytest.raises(ConfigError, match="labels"):
        experts.evaluate_expert(expert, tiny_bert, mnli)


def test_llama_expert_trains(tiny_llama, sst2, reference_logits, tmp_path):
    train, valid = sst2
    expert = experts.train_expert(_config(), tiny_llama, train_data=train, eval_data=valid)
    cfg = tiny_llama.model.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads
    assert expert.config.targets == ["q_proj", "v_proj"]
    assert math.prod(expert.tt_layout["v_proj"]["out_factors"]) == cfg.num_key_value_heads * head_dim
    assert math.prod(expert.tt_layout["q_proj"]["out_factors"]) == cfg.hidden_size
    cores = [k for k in expert.tensors if ".cores." in k]
    assert {k.split(".cores.")[0].rpartition(".")[2] for k in cores} == {"q_proj", "v_proj"}
    assert all(torch.isfinite(v).all() for v in expert.tensors.values())
    assert all(math.isfinite(h["loss"]) for h in expert.history)
    loaded = store.load_expert(store.save_expert(expert, tmp_path / "llama"),
                               expected_fingerprint=tiny_llama.info.fingerprint)
    logits = experts.predict_logits(experts.build_expert_model(loaded, tiny_llama), tiny_llama,
                                    valid.texts, valid.text_pairs, max_length=32)
    ref = reference_logits(tiny_llama, loaded, valid.texts, valid.text_pairs, 32)
    torch.testing.assert_close(logits, ref, rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- integration


@pytest.mark.slow
def test_embedded_expert_learns_and_round_trips(embedded, samples_dir, tmp_path, one_thread):
    train = tasks.load_task("sst2", "train", data_dir=samples_dir)
    valid = tasks.load_task("sst2", "validation", data_dir=samples_dir, limit=48)
    cfg = ExpertConfig(task="sst2", steps=30, batch_size=16, max_length=64, eval_limit=48)
    expert = experts.train_expert(cfg, embedded, train_data=train, eval_data=valid, log_every=5)
    losses = [h["loss"] for h in expert.history]
    assert len(losses) == 6 and all(math.isfinite(x) for x in losses)
    assert np.mean(losses[-3:]) < losses[0]
    assert expert.base.fingerprint == embedded.info.fingerprint
    per_layer = sum(tt.param_count(tt.core_shapes(layout["in_factors"], layout["out_factors"], 5))
                    for layout in expert.tt_layout.values())
    assert expert.adapter_params() == embedded.info.num_layers * per_layer
    loaded = store.load_expert(store.save_expert(expert, tmp_path / "sst2"),
                               expected_fingerprint=embedded.info.fingerprint)
    result = experts.evaluate_expert(loaded, embedded, valid)
    assert result["metrics"]["accuracy"] == expert.metrics["accuracy"]
    assert result["confusion"] == expert.metrics["confusion"]
