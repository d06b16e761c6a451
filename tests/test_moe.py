"""TTLoRAMoE on a tiny random BERT: the mixed batch equals the per-expert runs row by row (PEFT's
mixed-batch pattern), routing, independence of E, thread safety, input validation, evaluation."""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from tests.threads import run_together
from tests.tinymodels import SAMPLES, random_expert, tiny_bert, tiny_expert, tiny_router
from ttmoe_core import experts, moe, routing, tasks
from ttmoe_core.base import backbone
from ttmoe_core.base import partial as layers
from ttmoe_core.base.backbone import BackboneInfo, mean_pool

MAX_LENGTH = 128


@pytest.fixture(scope="module")
def bb() -> backbone.Backbone:
    return tiny_bert(seed=0)


@pytest.fixture(scope="module")
def three(bb) -> list[experts.Expert]:
    """mnli (3 labels, rank 3), sst2 (2 labels, rank 5), rte (2 labels, rank 4): they differ."""
    return [tiny_expert(bb, "mnli", rank=3, seed=0), tiny_expert(bb, "sst2", rank=5, seed=1),
            tiny_expert(bb, "rte", rank=4, seed=2)]


@pytest.fixture(scope="module")
def trained_router(bb, three) -> routing.Router:
    return tiny_router(bb, three, variant="mlp", layers=(1,), epochs=3)[0]


@pytest.fixture(scope="module")
def moe64(bb, three) -> moe.TTLoRAMoE:
    """The three experts stacked, no router, in float64."""
    return moe.TTLoRAMoE(bb, three, None, max_length=MAX_LENGTH).double()


@pytest.fixture(scope="module")
def routed(bb, three, trained_router) -> moe.TTLoRAMoE:
    return moe.TTLoRAMoE(bb, three, trained_router, max_length=MAX_LENGTH)


@pytest.fixture(scope="module")
def rows() -> list[tuple[str, str, str | None]]:
    """An interleaved batch: (expert name, text, pair); pairs (mnli, rte) and singles (sst2)."""
    data = {t: tasks.load_task(t, "validation", data_dir=SAMPLES, limit=3, seed=0)
            for t in ("mnli", "sst2", "rte")}
    out = []
    for i in range(3):
        for task in ("mnli", "sst2", "rte"):
            d = data[task]
            out.append((task, d.texts[i], d.text_pairs[i] if d.text_pairs else None))
    return out


def reference_probs(bb, expert: experts.Expert, text: str, pair: str | None) -> torch.Tensor:
    """Label probabilities of one row through the expert alone (its own model, float64)."""
    model = experts.build_expert_model(expert, bb).double().eval()
    batch = backbone.tokenize(bb.tokenizer, [text], [pair] if pair is not None else None,
                              MAX_LENGTH, bb.device)
    with torch.no_grad():
        return torch.softmax(model(batch)[0], -1)


# ----------------------------------------------------------------------------- mixed batch


def test_mixed_batch_equals_per_expert_runs_row_by_row(bb, three, moe64, rows):
    by_name = {e.name: e for e in three}
    assert {e.config.rank for e in three} == {3, 4, 5}
    # repeated rows (computed once) among the others, and one text again under another expert: a
    # mix-up of de-duplicated and input row indices cannot pass
    first_name, first_text, first_pair = rows[0]
    other = next(name for name, _, _ in rows if name != first_name)
    rows = [rows[4], *rows[:4], rows[0], rows[4], *rows[4:], (other, first_text, first_pair), rows[0]]
    assert len({(n, t, p) for n, t, p in rows}) < len(rows)
    out = moe64.predict([t for _, t, _ in rows], [p for _, _, p in rows],
                        expert=[name for name, _, _ in rows])
    assert len(out) == len(rows)
    models = {e.name: experts.build_expert_model(e, bb).double().eval() for e in three}
    for (name, text, pair), got in zip(rows, out):
        expert = by_name[name]
        assert got["expert"] == name and got["text"] == text and got["text_pair"] == pair
        assert list(got["label_probs"]) == expert.label_names
        batch = backbone.tokenize(bb.tokenizer, [text], [pair] if pair is not None else None,
                                  MAX_LENGTH, bb.device)
        with torch.no_grad():
            want = torch.softmax(models[name](batch)[0], -1)
        assert len(want) == len(expert.label_names)
        np.testing.assert_allclose(list(got["label_probs"].values()), want.numpy(),
                                   rtol=0, atol=1e-9)
        assert got["label"] == expert.label_names[int(want.argmax())]


def test_experts_really_differ(moe64, rows):
    """Guard for the test above: forcing another expert changes the answer."""
    texts, pairs = [t for _, t, _ in rows], [p for _, _, p in rows]
    a = moe64.predict(texts, pairs, expert="sst2")
    b = moe64.predict(texts, pairs, expert="rte")
    assert any(abs(x["label_probs"]["negative"] - y["label_probs"]["entailment"]) > 1e-6
               for x, y in zip(a, b))


# ----------------------------------------------------------------------------- routed predict


def test_routed_predict_documented_keys(routed, three):
    texts = ["a gorgeous , witty , seductive movie .", "The cat sat on the mat."]
    pairs = [None, "A cat is sitting."]
    out = routed.predict(texts, pairs)
    by_name = {e.name: e for e in three}
    for row in out:
        assert {"expert", "router_probs", "label", "label_probs", "truncated"} <= set(row)
        assert list(row["router_probs"]) == routed.names
        assert math.isclose(sum(row["router_probs"].values()), 1.0, abs_tol=1e-5)
        assert row["expert"] == max(row["router_probs"], key=row["router_probs"].get)
        expert = by_name[row["expert"]]
        assert row["task"] == expert.config.task
        assert row["label"] in expert.label_names
        assert list(row["label_probs"]) == expert.label_names
        assert math.isclose(sum(row["label_probs"].values()), 1.0, abs_tol=1e-5)
        assert row["truncated"] is False


def test_long_input_is_truncated(routed):
    long = " ".join(["word"] * (MAX_LENGTH + 50))
    out = routed.predict([long, "short"])
    assert out[0]["truncated"] is True and out[1]["truncated"] is False
    forced = routed.predict([long], expert="sst2")
    assert forced[0]["truncated"] is True and forced[0]["expert"] == "sst2"


def test_forced_expert_still_reports_router_probs(routed):
    out = routed.predict(["some text"], expert="rte")
    assert out[0]["expert"] == "rte"
    assert math.isclose(sum(out[0]["router_probs"].values()), 1.0, abs_tol=1e-5)


# ----------------------------------------------------------------------------- independent of E


def test_expert_part_does_not_depend_on_num_experts(bb, three, moe64, rows):
    extras = [random_expert(three[0], "rand0", rank=7, num_labels=4, seed=10),
              random_expert(three[0], "rand1", rank=2, num_labels=2, seed=11),
              random_expert(three[0], "rand2", rank=6, num_labels=3, seed=12)]
    bigger = moe.TTLoRAMoE(bb, [extras[0], three[0], extras[1], three[1], three[2], extras[2]],
                           None, max_length=MAX_LENGTH).double()
    assert len(bigger.names) == 6
    texts, pairs, names = [t for _, t, _ in rows], [p for _, _, p in rows], [n for n, _, _ in rows]
    small_out = moe64.predict(texts, pairs, expert=names)
    big_out = bigger.predict(texts, pairs, expert=names)
    for a, b in zip(small_out, big_out):
        assert a["expert"] == b["expert"] and a["label"] == b["label"]
        np.testing.assert_allclose(list(a["label_probs"].values()),
                                   list(b["label_probs"].values()), rtol=0, atol=1e-10)
    # rows of the random experts mixed in do not disturb the others
    mixed_names = [n if i % 2 else "rand0" for i, n in enumerate(names)]
    mixed = bigger.predict(texts, pairs, expert=mixed_names)
    for i, (a, b) in enumerate(zip(small_out, mixed)):
        if i % 2:
            np.testing.assert_allclose(list(a["label_probs"].values()),
                                       list(b["label_probs"].values()), rtol=0, atol=1e-10)
        else:
            assert b["expert"] == "rand0" and len(b["label_probs"]) == 4


# ----------------------------------------------------------------------------- threads


def test_threads_share_one_mixture(routed, rows):
    texts, pairs, names = [t for _, t, _ in rows], [p for _, _, p in rows], [n for n, _, _ in rows]
    jobs = []
    for i in range(8):
        take = [(i + j) % len(rows) for j in range(1 + i % 4)]
        forced = None if i % 3 == 0 else ([names[j] for j in take] if i % 3 == 1
                                          else routed.names[i % 3])
        jobs.append(([texts[j] for j in take], [pairs[j] for j in take], forced))
    expected = [routed.predict(t, p, expert=f) for t, p, f in jobs]
    for _ in range(3):
        calls = [functools.partial(routed.predict, t, p, expert=f) for t, p, f in jobs]
        assert run_together(calls) == expected


def stress_inputs(rows) -> list[tuple[str, str | None]]:
    """Short rows of the samples and rows longer than MAX_LENGTH tokens: a long single, pairs
    with a long first / second / both texts, one exactly at the limit and one just over it."""
    long_a = " ".join(f"premise{i % 7} word" for i in range(MAX_LENGTH))
    long_b = " ".join(f"hypothesis{i % 5}" for i in range(MAX_LENGTH + 20))
    at_limit = " ".join(["word"] * (MAX_LENGTH - 2))        # [CLS] + 126 words + [SEP] = 128
    over = " ".join(["word"] * (MAX_LENGTH - 1))            # 129 tokens: truncated by one
    short = [(t, p) for _, t, p in rows]
    return short + [(long_a, None), (long_a, "A short hypothesis."), ("A short premise.", long_b),
                    (long_a, long_b), (at_limit, None), (over, None), (long_b, None)]


def test_sixteen_threads_with_truncated_inputs_equal_sequential_answers(routed, rows):
    """Concurrency stress: 16 threads × mixed short and truncated inputs (pairs and singles) on
    one mixture give the sequential answers row for row (issue 10: 'Already borrowed')."""
    inputs = stress_inputs(rows)
    jobs = []
    for i in range(16):
        take = [(3 * i + j) % len(inputs) for j in range(2 + i % 5)] + [len(inputs) - 1 - i % 7]
        forced = None if i % 2 == 0 else routed.names[i % 3]
        jobs.append(([inputs[j][0] for j in take], [inputs[j][1] for j in take], forced))
    expected = [routed.predict(t, p, expert=f) for t, p, f in jobs]
    assert any(row["truncated"] for out in expected for row in out)
    assert any(not row["truncated"] for out in expected for row in out)

    def twice(t, p, f):
        return [routed.predict(t, p, expert=f) for _ in range(2)][-1]

    for _ in range(3):
        assert run_together([functools.partial(twice, t, p, f) for t, p, f in jobs]) == expected


# ----------------------------------------------------------------------------- length-aware batching


def one_padded_batch(mixture: moe.TTLoRAMoE, texts, pairs, forced=None):
    """The simple path: all rows in input order in one padded batch -> (expert_idx [N],
    router probs [N, E] or None, logits [N, C_max], truncated)."""
    bb = mixture.backbone
    batch, truncated = backbone.tokenize_mixed(bb.tokenizer, texts, pairs, MAX_LENGTH, bb.device)
    probs = mixture.route(batch, texts, pairs) if mixture.router is not None else None
    idx = torch.tensor(forced) if forced is not None else probs.argmax(-1)
    return idx, probs, mixture.expert_logits(batch, idx), truncated


def shuffled_with_repeats(rows) -> tuple[list[str], list[str | None]]:
    """Short and truncated rows, each twice or three times, in a fixed random order."""
    inputs = stress_inputs(rows)
    inputs = inputs * 2 + inputs[::3]
    order = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(0)).tolist()
    return [inputs[i][0] for i in order], [inputs[i][1] for i in order]


@pytest.mark.parametrize("batch_size, max_tokens", [(3, 160), (16, 2048), (64, None)])
@pytest.mark.parametrize("group_min_rows", [None, 2])
def test_micro_batches_equal_one_padded_batch(routed, rows, batch_size, max_tokens,
                                              group_min_rows):
    """float32, routed: same experts, router probabilities and logits (to 1e-5) row for row."""
    texts, pairs = shuffled_with_repeats(rows)
    encoded, forced = routed.prepare(texts, pairs)
    got = routed.score(encoded, forced, batch_size=batch_size, max_tokens=max_tokens,
                       group_min_rows=group_min_rows)
    idx, probs, logits, truncated = one_padded_batch(routed, texts, pairs)
    assert torch.equal(got.expert_idx, idx)
    torch.testing.assert_close(got.router_probs, probs, rtol=0, atol=1e-5)
    torch.testing.assert_close(got.logits, logits, rtol=0, atol=1e-5)
    assert list(got.truncated) == truncated and any(truncated)
    assert len(set(idx.tolist())) > 1


@pytest.mark.parametrize("batch_size, max_tokens", [(1, None), (4, 300), (16, 2048)])
@pytest.mark.parametrize("group_min_rows", [None, 1, 3, 10_000])
def test_micro_batches_equal_one_padded_batch_float64(moe64, rows, batch_size, max_tokens,
                                                      group_min_rows):
    """float64, every row forced to an expert (interleaved): logits equal to 1e-10, whether an
    expert's rows run mixed with the others' or in micro-batches of their own (merged weights)."""
    texts, pairs = shuffled_with_repeats(rows)
    encoded, forced = moe64.prepare(texts, pairs, [moe64.names[i % 3] for i in range(len(texts))])
    got = moe64.score(encoded, forced, batch_size=batch_size, max_tokens=max_tokens,
                      group_min_rows=group_min_rows)
    _, _, logits, _ = one_padded_batch(moe64, texts, pairs, forced)
    assert got.router_probs is None and got.expert_idx.tolist() == forced
    torch.testing.assert_close(got.logits, logits, rtol=0, atol=1e-10)


def test_predict_keeps_input_order_with_repeated_rows(routed, rows):
    texts, pairs = shuffled_with_repeats(rows)
    out = routed.predict(texts, pairs, batch_size=4, max_tokens=400)
    assert [(r["text"], r["text_pair"]) for r in out] == list(zip(texts, pairs))
    by_input: dict = {}
    for row in out:    # a repeated row is computed once: identical answers
        assert by_input.setdefault((row["text"], row["text_pair"]), row) == row
    for (text, pair), row in by_input.items():
        alone = routed.predict([text], [pair])[0]
        assert alone["expert"] == row["expert"] and alone["label"] == row["label"]
        assert alone["truncated"] == row["truncated"]
        np.testing.assert_allclose(list(alone["label_probs"].values()),
                                   list(row["label_probs"].values()), rtol=0, atol=1e-5)
        np.testing.assert_allclose(list(alone["router_probs"].values()),
                                   list(row["router_probs"].values()), rtol=0, atol=1e-5)


def test_empty_after_strip_is_refused_among_many_rows(routed, rows):
    texts, pairs = shuffled_with_repeats(rows)
    texts[7] = " \t\n "
    with pytest.raises(moe.MoEError, match="input 8 is empty"):
        routed.predict(texts, pairs)


def test_evaluation_tokenizes_once_and_routes_each_row_once(routed, three, monkeypatch):
    encodes, routed_rows = [], []
    real_encode, real_route = moe.mixture.encode_rows, routed._route_states

    def encode(tokenizer, texts, *args):
        encodes.append(len(texts))
        return real_encode(tokenizer, texts, *args)

    def route(batch, text_feats):
        routed_rows.append(batch["input_ids"].shape[0])
        return real_route(batch, text_feats)

    monkeypatch.setattr(moe.mixture, "encode_rows", encode)
    monkeypatch.setattr(routed, "_route_states", route)
    pairs = [(e.name, e.config.task) for e in three]
    result = moe.evaluate_mixture(routed, pairs, 6, data_dir=SAMPLES, batch_size=4)
    assert result["routing_accuracy"] < 1.0          # some rows took the oracle's second pass
    assert encodes == [6, 6, 6] and sum(routed_rows) == 18


# ----------------------------------------------------------------------------- validation


@pytest.mark.parametrize("texts, pairs, forced", [
    ([], None, None),
    ([""], None, None),
    (["   "], None, None),
    (["ok", ""], None, None),
    (["ok"], None, "no-such-expert"),
    (["ok", "fine"], None, ["sst2", "nope"]),
    (["ok", "fine"], ["pair"], None),
    (["ok", "fine"], None, ["sst2", "rte", "mnli"]),
])
def test_bad_input_raises_moe_error(routed, texts, pairs, forced):
    with pytest.raises(moe.MoEError):
        routed.predict(texts, pairs, expert=forced)


def test_score_refuses_bad_forced_indices(routed):
    encoded, _ = routed.prepare(["one", "two"])
    for forced in ([0], [0, 1, 2], [0, 3], [-1, 0]):
        with pytest.raises(moe.MoEError):
            routed.score(encoded, forced)


def test_no_router_needs_forced_expert(moe64):
    with pytest.raises(moe.MoEError):
        moe64.predict(["hello"])


def test_stacking_different_tt_shapes_refused(bb, three):
    other = tiny_expert(bb, "sst2", rank=3, name="sst2-other-shape",
                        shapes={"query": [4, 12, 12, 4], "value": [4, 12, 12, 4]})
    assert other.tt_layout != three[0].tt_layout
    with pytest.raises(moe.MoEError):
        moe.TTLoRAMoE(bb, [three[0], other], None)


def test_lora_expert_refused(bb, three):
    lora = tiny_expert(bb, "sst2", rank=2, method="lora", name="sst2-lora")
    with pytest.raises(moe.MoEError):
        moe.TTLoRAMoE(bb, [three[0], lora], None)


def test_empty_or_duplicate_experts_refused(bb, three):
    with pytest.raises(moe.MoEError):
        moe.TTLoRAMoE(bb, [], None)
    with pytest.raises(moe.MoEError):
        moe.TTLoRAMoE(bb, [three[0], three[0]], None)


def test_experts_from_different_base_models_refused(bb, three):
    foreign_info = BackboneInfo(**{**three[1].base.to_dict(), "fingerprint": "0" * 64})
    foreign = dataclasses.replace(three[1], base=foreign_info)
    with pytest.raises(moe.MoEError):
        moe.TTLoRAMoE(bb, [three[0], foreign], None)


def test_experts_refused_on_another_backbone(three):
    other = tiny_bert(seed=1)
    assert other.info.fingerprint != three[0].base.fingerprint
    with pytest.raises(ValueError):   # MoEError or backbone.BackboneError
        moe.TTLoRAMoE(other, three, None)


# ----------------------------------------------------------------------------- evaluation


class LookupRouter(routing.Router):
    """A router that is always right: one-hot logits looked up from the row's surface features."""

    def __init__(self, table: dict[bytes, int], num_experts: int, hidden_size: int):
        super().__init__(routing.RouterConfig(variant="fusion", layer=0), num_experts, hidden_size)
        self.table = table
        self.dummy = nn.Parameter(torch.zeros(1))   # the mixture reads the router's dtype

    @staticmethod
    def key(surface_row: torch.Tensor) -> bytes:
        return np.round(surface_row.detach().cpu().double().numpy(), 4).tobytes()

    def forward(self, feats):
        idx = [self.table[self.key(row)] for row in feats["surface"]]
        logits = torch.full((len(idx), self.num_experts), -30.0, dtype=feats["surface"].dtype)
        logits[torch.arange(len(idx)), torch.tensor(idx)] = 30.0
        return logits + 0 * self.dummy


def test_evaluate_mixture_with_trained_router(routed, three):
    pairs = [(e.name, e.config.task) for e in three]
    per_task = 6
    result = moe.evaluate_mixture(routed, pairs, per_task, data_dir=SAMPLES)
    assert 0.0 <= result["routing_accuracy"] <= 1.0
    assert result["names"] == routed.names
    assert sum(map(sum, result["confusion"])) == result["rows"] == per_task * len(three)
    diag = sum(result["confusion"][i][i] for i in range(len(three)))
    assert math.isclose(result["routing_accuracy"], diag / result["rows"])
    for i, (name, task) in enumerate(pairs):
        row = result["per_task"][name]
        assert math.isclose(row["routing_accuracy"], result["confusion"][i][i] / per_task)
        metric = row["metric"]
        assert metric in row["mixture"] and metric in row["oracle"]
        # the oracle is the forced expert's metric, computed independently here
        data = tasks.load_task(task, "validation", data_dir=SAMPLES, limit=per_task, seed=0)
        forced = routed.predict(data.texts, data.text_pairs, expert=name)
        preds = [three[i].label_names.index(r["label"]) for r in forced]
        want = tasks.compute_metrics(tasks.TASKS[task], data.labels, preds)
        assert row["oracle"][metric] == pytest.approx(want[metric], abs=1e-9)
        # rows routed to the right expert answer exactly as the oracle does
        routed_rows = routed.predict(data.texts, data.text_pairs)
        for got, ref in zip(routed_rows, forced):
            if got["expert"] == name:
                assert got["label"] == ref["label"]
                np.testing.assert_allclose(list(got["label_probs"].values()),
                                           list(ref["label_probs"].values()), atol=1e-5)
        if row["routing_accuracy"] == 1.0:
            assert row["mixture"] == row["oracle"]


def test_always_right_router_makes_mixture_equal_oracle(bb, three):
    pairs = [(e.name, e.config.task) for e in three]
    per_task = 5
    table = {}
    for idx, (_, task) in enumerate(pairs):
        data = tasks.load_task(task, "validation", data_dir=SAMPLES, limit=per_task, seed=0)
        surface = routing.surface_features(data.texts, data.text_pairs)
        for row in surface:
            table[LookupRouter.key(row)] = idx
    assert len(table) == per_task * len(pairs)
    oracle_moe = moe.TTLoRAMoE(bb, three, LookupRouter(table, len(three), bb.info.hidden_size),
                               max_length=MAX_LENGTH)
    result = moe.evaluate_mixture(oracle_moe, pairs, per_task, data_dir=SAMPLES)
    assert result["routing_accuracy"] == 1.0
    assert result["confusion"] == [[per_task if i == j else 0 for j in range(3)] for i in range(3)]
    for name, _ in pairs:
        assert result["per_task"][name]["mixture"] == result["per_task"][name]["oracle"]


# ----------------------------------------------------------------------------- loading once


def test_pack_files_are_read_once(tmp_path, monkeypatch, capsys):
    """from_pack (with or without a base model given) and the CLI's predict and eval-moe read
    each expert of the pack once (issue 9: the pack was loaded and validated twice)."""
    from tests.tinymodels import saved_tiny_bert, tiny_pack
    from ttmoe_core import cli, store

    base = saved_tiny_bert(tmp_path / "base")
    pack_dir, pack_experts, _ = tiny_pack(tmp_path / "pack", base, ["sst2", "rte"])
    reads: list[str] = []
    real_load_expert = store.load_expert

    def load_expert(path, *args, **kwargs):
        reads.append(Path(path).name)
        return real_load_expert(path, *args, **kwargs)

    monkeypatch.setattr(store.packs, "load_expert", load_expert)
    names = [e.name for e in pack_experts]
    mixture = moe.TTLoRAMoE.from_pack(pack_dir, backbone=base)
    assert reads == names and mixture.names == names
    reads.clear()
    moe.TTLoRAMoE.from_pack(pack_dir, device="cpu")
    assert reads == names
    for argv in (["predict", "--json", "--pack", pack_dir, "a fine movie"],
                 ["eval-moe", "--json", "--pack", pack_dir, "--per-task", "2", "--data-dir", SAMPLES]):
        reads.clear()
        assert cli.main([str(a) for a in argv]) == 0
        assert reads == names, argv
    capsys.readouterr()
    loaded = store.load_pack(pack_dir)
    reads.clear()
    again = moe.TTLoRAMoE.from_loaded_pack(loaded, backbone=base)
    assert reads == [] and again.predict(["a fine movie"]) == mixture.predict(["a fine movie"])


def test_pack_on_another_base_model_is_refused(tmp_path):
    from tests.tinymodels import tiny_pack
    from ttmoe_core import store

    bb0 = tiny_bert(seed=0)
    pack_dir = tiny_pack(tmp_path / "pack", bb0, ["sst2"])[0]
    with pytest.raises(store.StoreError, match="trained on another base model"):
        moe.TTLoRAMoE.from_loaded_pack(store.load_pack(pack_dir), backbone=tiny_bert(seed=1))


# ----------------------------------------------------------------------------- route pass


def test_route_pass_reads_the_base_model_with_adapters_off(bb, routed, rows):
    texts, pairs = [t for _, t, _ in rows], [p for _, _, p in rows]
    batch, _ = backbone.tokenize_mixed(bb.tokenizer, texts, pairs, MAX_LENGTH, bb.device)
    cfg = routing.RouterConfig(variant="mlp", layer=2).resolved(bb.info.num_layers)
    from ttmoe_core.adapters import use_row_halves

    halves = routed.pool.gather(torch.zeros(len(texts), dtype=torch.long)).halves
    with use_row_halves(halves):        # even inside a forward whose rows have experts
        feats = routing.batch_features(routed.encoder, batch, texts, pairs, cfg)
    with torch.no_grad():
        plain = layers.hidden_states(bb.model, batch, 2)
    want = torch.stack([mean_pool(h, batch["attention_mask"]) for h in plain], 1)
    torch.testing.assert_close(feats["pooled"], want, rtol=0, atol=1e-6)
    # guard: with the experts' updates on, the encoder's states differ
    with torch.no_grad(), use_row_halves(halves):
        adapted = layers.hidden_states(routed.encoder, batch, 2)
    assert not torch.allclose(adapted[-1], plain[-1], atol=1e-4)


# ----------------------------------------------------------------------------- pools, prefix


def test_encoder_shares_the_backbone_weights_until_converted(bb, three):
    mixture = moe.TTLoRAMoE(bb, three, None, max_length=MAX_LENGTH)
    ptrs = {p.data_ptr() for p in bb.model.parameters()}
    assert all(p.data_ptr() in ptrs for p in mixture.encoder.parameters())
    mixture.double()
    assert next(mixture.encoder.parameters()).dtype == torch.float64
    assert all(p.dtype == torch.float32 for p in bb.model.parameters())       # untouched
    assert not any(p.data_ptr() in ptrs for p in mixture.encoder.parameters())


@pytest.fixture(scope="module")
def upper_routed(bb, three, trained_router) -> moe.TTLoRAMoE:
    """Experts adapting only layers >= the router's layer (1), routed, float64."""
    from ttmoe_core.bench.expert_pools import upper_layer_experts

    assert trained_router.config.layer == 1
    return moe.TTLoRAMoE(bb, upper_layer_experts(three, 1), trained_router,
                         max_length=MAX_LENGTH).double()


def test_prefix_reuse_equals_the_full_pass_float64(upper_routed, rows, monkeypatch):
    """Upper-layer experts: the expert pass continues from the router's layer-1 state; same
    experts and logits (1e-10) as the pass from the embeddings, row for row."""
    texts, pairs = shuffled_with_repeats(rows)
    encoded, forced = upper_routed.prepare(texts, pairs)
    continued = []
    real = moe.mixture.continue_layers
    monkeypatch.setattr(moe.mixture, "continue_layers", lambda *a: continued.append(1) or real(*a))
    shared = upper_routed.score(encoded, forced, batch_size=4, max_tokens=300)
    assert len(continued) == len(batching_plan(encoded, 4, 300))       # every micro-batch
    continued.clear()
    full = upper_routed.score(encoded, forced, batch_size=4, max_tokens=300, share_prefix=False)
    assert not continued
    assert torch.equal(shared.expert_idx, full.expert_idx)
    torch.testing.assert_close(shared.logits, full.logits, rtol=0, atol=1e-10)
    torch.testing.assert_close(shared.router_probs, full.router_probs, rtol=0, atol=1e-12)
    _, _, simple, _ = one_padded_batch(upper_routed, texts, pairs)
    torch.testing.assert_close(shared.logits, simple, rtol=0, atol=1e-10)


def batching_plan(encoded, batch_size, max_tokens):
    from ttmoe_core.base import batching

    first, _ = batching.distinct(list(zip(encoded.texts, encoded.text_pairs)))
    return batching.plan(encoded.take(first).lengths, max_tokens, batch_size)


def test_mixed_full_and_upper_experts_fall_back_where_needed(bb, three, trained_router, rows):
    """A pool of upper-layer and full experts: micro-batches holding a full expert run from the
    embeddings; every row equals its expert alone (float64)."""
    from ttmoe_core.bench.expert_pools import upper_layer_experts

    pool_experts = upper_layer_experts(three[:2], 1) + three[2:]
    mixture = moe.TTLoRAMoE(bb, pool_experts, trained_router, max_length=MAX_LENGTH).double()
    texts, pairs = [t for _, t, _ in rows], [p for _, _, p in rows]
    names = [mixture.names[i % 3] for i in range(len(texts))]
    out = mixture.predict(texts, pairs, expert=names, batch_size=2)
    models = {e.name: experts.build_expert_model(e, bb).double().eval() for e in pool_experts}
    for text, pair, name, got in zip(texts, pairs, names, out):
        batch = backbone.tokenize(bb.tokenizer, [text], [pair] if pair else None, MAX_LENGTH,
                                  bb.device)
        with torch.no_grad():
            want = torch.softmax(models[name](batch)[0], -1)
        np.testing.assert_allclose(list(got["label_probs"].values()), want.numpy(), atol=1e-9)


def test_large_pool_gathers_the_right_experts(bb, three, rows):
    """300 experts (five chunks): rows sent to a few of them equal those experts alone."""
    from ttmoe_core.bench.expert_pools import random_pool
    from ttmoe_core.moe.pool import ExpertPool

    pool = random_pool(ExpertPool.from_experts(three), 300, seed=3)
    for expert in three:
        pool.add(expert)
    mixture = moe.TTLoRAMoE(bb, pool, None, max_length=MAX_LENGTH).double()
    small = moe.TTLoRAMoE(bb, three, None, max_length=MAX_LENGTH).double()
    texts, pairs = [t for _, t, _ in rows], [p for _, _, p in rows]
    names = [three[i % 3].name for i in range(len(texts))]
    big = mixture.predict(texts, pairs, expert=names)
    assert big == small.predict(texts, pairs, expert=names)
    others = mixture.predict(texts, pairs, expert=[f"random-{7 * i:05d}" for i in range(len(texts))])
    assert [r["expert"] for r in others] == [f"random-{7 * i:05d}" for i in range(len(texts))]


def test_router_top_and_router_size(bb, three, routed, trained_router):
    out = routed.predict(["a fine film"], router_top=2)[0]
    full = routed.predict(["a fine film"])[0]
    assert len(out["router_probs"]) == 2 and out["expert"] in out["router_probs"]
    top = sorted(full["router_probs"].items(), key=lambda kv: -kv[1])[:2]
    assert out["router_probs"] == dict(top)
    with pytest.raises(moe.MoEError, match="outputs"):
        moe.TTLoRAMoE(bb, three[:2], trained_router)
