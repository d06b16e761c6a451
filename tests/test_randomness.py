"""Randomness through local generators only (ttmoe_core.rng): trainings never touch torch's global
RNG, so two run at once in two threads give exactly what they give one after the other."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest
import torch
from torch import nn

from tests.tinymodels import SAMPLES, tiny_bert
from ttmoe_core import baselines, experts, routing, tasks
from ttmoe_core.routing import SURFACE_DIM, RouterConfig
from ttmoe_core.runtime import rng

HIDDEN, LAYERS, EXPERTS = 16, 2, 3


@pytest.fixture(scope="module")
def bb():
    return tiny_bert()


@pytest.fixture(scope="module")
def sst2_cola():
    return {task: (tasks.load_task(task, "train", data_dir=SAMPLES, limit=16),
                   tasks.load_task(task, "validation", data_dir=SAMPLES, limit=24))
            for task in ("sst2", "cola")}


def _expert_config(task: str, seed: int, method: str = "tt-lora") -> experts.ExpertConfig:
    return experts.ExpertConfig(task=task, method=method, rank=3 if method == "tt-lora" else 4,
                                init="kaiming", steps=6, batch_size=4, max_length=32, seed=seed,
                                device="cpu")


def _train_expert(bb, data, task: str, seed: int, method: str = "tt-lora") -> experts.Expert:
    train, valid = data[task]
    return experts.train_expert(_expert_config(task, seed, method), bb, train_data=train,
                                eval_data=valid, log_every=1)


def _features(seed: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(EXPERTS).repeat_interleave(20)
    n = labels.shape[0]
    return ({"pooled": torch.randn(n, LAYERS + 1, HIDDEN, generator=g) + labels[:, None, None],
             "last": torch.randn(n, HIDDEN, generator=g) + labels[:, None],
             "mean_last": torch.randn(n, HIDDEN, generator=g),
             "surface": torch.randn(n, 2 * SURFACE_DIM + 6, generator=g),
             # the ngram variant's inputs
             "seg": torch.randn(n, LAYERS + 1, 2, HIDDEN, generator=g) + labels[:, None, None, None],
             "ngram_ids": torch.randint(0, 4 * routing.BUCKETS, (n, 6), generator=g),
             "ngram_w": torch.rand(n, 6, generator=g),
             "flags": torch.randn(n, routing.FLAGS, generator=g)}, labels)


def _train_router(variant: str, seed: int) -> tuple[list[dict], dict[str, torch.Tensor]]:
    feats, labels = _features(seed)
    config = RouterConfig(variant=variant, layer=1, hidden=16, epochs=8, batch_size=16, seed=seed)
    model = routing.build(config, EXPERTS, HIDDEN, LAYERS)
    return routing.train_router(model, feats, labels), model.state_dict()


def _concurrently(*jobs: Callable[[], object]) -> list[object]:
    """Run the jobs in threads released together by a barrier; their results in order."""
    barrier = threading.Barrier(len(jobs))
    results: list[object] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        barrier.wait()
        try:
            results[i] = jobs[i]()
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def _same_expert(a: experts.Expert, b: experts.Expert) -> bool:
    return (a.history and [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
            and a.tensors.keys() == b.tensors.keys()
            and all(torch.equal(a.tensors[k], b.tensors[k]) for k in a.tensors))


# ----------------------------------------------------------------------------- rng helpers


def test_drawing_from_routes_module_init_to_the_generator():
    state = torch.get_rng_state()
    with rng.drawing_from(torch.Generator().manual_seed(3)):
        first = nn.Linear(6, 4)
    with rng.drawing_from(torch.Generator().manual_seed(3)):
        again = nn.Linear(6, 4)
        explicit = torch.rand(2, generator=torch.Generator().manual_seed(9))
    with rng.drawing_from(torch.Generator().manual_seed(4)):
        other = nn.Linear(6, 4)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(first.weight, again.weight) and torch.equal(first.bias, again.bias)
    assert not torch.equal(first.weight, other.weight)
    assert torch.equal(explicit, torch.rand(2, generator=torch.Generator().manual_seed(9)))


def test_drawing_from_is_confined_to_its_thread():
    generator = torch.Generator().manual_seed(0)
    seen: dict[str, torch.Tensor] = {}
    with rng.drawing_from(generator):
        before = generator.get_state()
        thread = threading.Thread(target=lambda: seen.update(state=torch.get_rng_state(),
                                                             draw=torch.rand(3)))
        thread.start()
        thread.join()
        assert torch.equal(generator.get_state(), before)       # the other thread drew globally
    assert not torch.equal(seen["state"], torch.get_rng_state())


def test_dropout_draws_its_mask_from_its_generator():
    x = torch.ones(64, 32)
    state = torch.get_rng_state()
    a = rng.Dropout(0.25, torch.Generator().manual_seed(1))
    b = rng.Dropout(0.25, torch.Generator().manual_seed(1))
    out_a, out_b = a(x), b(x)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(out_a, out_b) and not torch.equal(a(x), out_a)   # same seed, fresh masks
    assert out_a.unique().tolist() == [0.0, torch.tensor(1 / 0.75).item()]
    assert abs(float((out_a == 0).float().mean()) - 0.25) < 0.05
    a.eval()
    assert a(x) is x and rng.Dropout(0.0)(x) is x
    with pytest.raises(ValueError):
        rng.Dropout(1.0)


def test_gaussian_follows_its_generator():
    like = torch.zeros(3, 5, dtype=torch.float64)
    a = rng.gaussian(like, torch.Generator().manual_seed(2))
    assert a.shape == like.shape and a.dtype == like.dtype
    assert torch.equal(a, torch.randn(3, 5, generator=torch.Generator().manual_seed(2)).double())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_draws_for_another_device_equal_the_cpu_draws():
    def build(device: str) -> nn.Linear:
        with rng.drawing_from(torch.Generator().manual_seed(3)):
            layer = nn.Linear(6, 4, device=device)
            nn.init.normal_(layer.weight)                       # in place on the device
        return layer

    assert torch.equal(build("cuda").weight.cpu(), build("cpu").weight)
    with rng.drawing_from(torch.Generator().manual_seed(4)):
        on_cuda = torch.rand(5, device="cuda")
    assert on_cuda.is_cuda and torch.equal(on_cuda.cpu(),
                                           torch.rand(5, generator=torch.Generator().manual_seed(4)))
    x = torch.ones(8, 8)
    masks = [rng.Dropout(0.5, torch.Generator().manual_seed(5))(x.to(device)).cpu()
             for device in ("cuda", "cpu")]
    assert torch.equal(*masks)


# ----------------------------------------------------------------------------- trainings


@pytest.mark.parametrize("method", ["tt-lora", "lora", "adapter"])
def test_expert_training_leaves_the_global_rng_alone(bb, sst2_cola, method):
    torch.manual_seed(123)
    state = torch.get_rng_state()
    first = _train_expert(bb, sst2_cola, "sst2", 0, method)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(456)                                      # the global seed plays no part
    assert _same_expert(first, _train_expert(bb, sst2_cola, "sst2", 0, method))


def test_expert_seed_changes_init_order_and_dropout(bb, sst2_cola):
    assert not _same_expert(_train_expert(bb, sst2_cola, "sst2", 0),
                            _train_expert(bb, sst2_cola, "sst2", 1))


def test_two_expert_trainings_in_threads_equal_sequential_runs(bb, sst2_cola):
    sequential = [_train_expert(bb, sst2_cola, "sst2", 0), _train_expert(bb, sst2_cola, "cola", 1)]
    state = torch.get_rng_state()
    concurrent = _concurrently(lambda: _train_expert(bb, sst2_cola, "sst2", 0),
                               lambda: _train_expert(bb, sst2_cola, "cola", 1))
    assert torch.equal(torch.get_rng_state(), state)
    assert all(_same_expert(s, c) for s, c in zip(sequential, concurrent))


@pytest.mark.parametrize("variant", routing.VARIANTS)
def test_router_training_leaves_the_global_rng_alone(variant):
    torch.manual_seed(7)
    state = torch.get_rng_state()
    history, weights = _train_router(variant, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(8)
    again, weights_again = _train_router(variant, seed=0)
    assert again == history and all(torch.equal(weights[k], weights_again[k]) for k in weights)
    other, _ = _train_router(variant, seed=1)
    assert other != history


def test_two_router_trainings_in_threads_equal_sequential_runs():
    sequential = [_train_router("paper", 0), _train_router("mlp", 1)]   # noise; dropout
    concurrent = _concurrently(lambda: _train_router("paper", 0), lambda: _train_router("mlp", 1))
    for (history, weights), (history_c, weights_c) in zip(sequential, concurrent):
        assert history == history_c
        assert all(torch.equal(weights[k], weights_c[k]) for k in weights)


def test_fusion_training_leaves_the_global_rng_alone(bb, sst2_cola):
    adapters = {task: _train_expert(bb, sst2_cola, task, 0, "adapter") for task in sst2_cola}
    train = {task: data[0] for task, data in sst2_cola.items()}
    config = baselines.FusionConfig(steps=4, batch_size=6, max_length=32)
    torch.manual_seed(5)
    state = torch.get_rng_state()
    first = baselines.train_fusion(bb, adapters, train, config, log_every=1)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(6)
    again = baselines.train_fusion(bb, adapters, train, config, log_every=1)
    assert [h["loss"] for h in first.history] == [h["loss"] for h in again.history]
    a, b = first.model.state_dict(), again.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
