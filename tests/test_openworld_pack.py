"""Open-world routing in a pack (issue 14), on a tiny BERT and the shipped samples:
train-router --variant ngram --all-rows writes replay rows; calibrate-pool writes the out-of-pool
detector; every routed row gets in_pool (bool) and pool_score (float); abstain mode; predict
--json / --abstain; add-expert keeps the old experts' bytes and routes the new task; casing does
not change routing; corrupt pool / replay files are StoreErrors. Slow: the shipped demo pack."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from tests.tinymodels import SAMPLES, saved_tiny_bert, tiny_expert, tree_hashes
from ttmoe_core import cli, routing, store
from ttmoe_core.moe import MoEError, TTLoRAMoE
from ttmoe_core.moe import fit as poolfit
from ttmoe_core.store import detector as poolfiles

TEXTS = ["The acting was wooden and the plot made no sense.", "I loved every minute of it.",
         "Him and me went to the store yesterday.", "the cat sat on the mat ."]


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return saved_tiny_bert(tmp_path_factory.mktemp("tinybase"))


@pytest.fixture(scope="module")
def pack(tmp_path_factory, base):
    """A two-expert pack (cola, sst2) with an ngram router (+ replay rows) and a detector."""
    folder = tmp_path_factory.mktemp("owpack") / "pack"
    for i, task in enumerate(("cola", "sst2")):
        store.append_expert(folder, tiny_expert(base, task, seed=i))
    assert cli.main(["train-router", "--pack", str(folder), "--variant", "ngram", "--all-rows",
                     "--cap", "60", "--epochs", "4", "--layer", "1", "--eval-per-task", "20",
                     "--data-dir", str(SAMPLES), "--quiet", "--json"]) == 0
    assert cli.main(["calibrate-pool", "--pack", str(folder), "--per-task", "60", "--dims", "24",
                     "--bank-per-class", "10", "--data-dir", str(SAMPLES), "--quiet", "--json"]) == 0
    return folder


@pytest.fixture()
def pack_copy(tmp_path, pack):
    shutil.copytree(pack, tmp_path / "pack")
    return tmp_path / "pack"


def test_pack_files_and_figures(pack):
    config = json.loads((pack / store.ROUTER_CONFIG_FILE).read_text())
    assert config["config"]["variant"] == "ngram" and config["metrics"]["recipe"]["all_rows"]
    for name in store.ROUTER_COMPANIONS:
        assert (pack / name).is_file(), name
    manifest = json.loads((pack / store.PACK_FILE).read_text())
    figures = manifest["metrics"]["pool"]
    assert 0.0 <= figures["auroc"] <= 1.0 and 0.0 <= figures["false_flag"] <= 1.0
    assert figures["calibration_families"] == ["mrpc"]
    assert set(figures["evaluation_families"]) == {"mnli", "rte", "qnli", "qqp"}
    pool_config = json.loads((pack / store.POOL_CONFIG_FILE).read_text())
    assert pool_config["components"] == ["energy", "knn", "lm", "maha", "msp"]   # all calibrated
    assert set(pool_config["weights"]) == set(pool_config["components"])         # all weighed
    detector = poolfiles.read_pool(pack, manifest)
    assert detector.num_classes == 2 and detector.layer == 1
    assert detector.scorer.precision.shape == (24, 24)          # --dims 24 kept
    assert detector.threshold == pytest.approx(figures["threshold"])


def test_rows_carry_in_pool_and_pool_score(pack, base):
    moe = TTLoRAMoE.from_pack(pack, backbone=base)
    rows = moe.predict(TEXTS)
    for row in rows:
        assert isinstance(row["in_pool"], bool) and isinstance(row["pool_score"], float)
        assert math.isfinite(row["pool_score"])
        assert row["in_pool"] == (row["pool_score"] >= moe.openworld.threshold)
    # the served score is the detector's score of the same rows computed offline, one call
    ref = poolfit.features(base, moe.router, TEXTS, [None] * len(TEXTS), moe.openworld.layer)
    offline = moe.openworld.score(ref["dense"], ref["logits"], TEXTS, [None] * len(TEXTS))
    assert torch.allclose(torch.tensor([r["pool_score"] for r in rows]), offline, atol=1e-3)
    # micro-batching does not change it
    one_by_one = moe.predict(TEXTS, batch_size=1)
    assert [r["pool_score"] for r in one_by_one] == pytest.approx([r["pool_score"] for r in rows], abs=1e-4)
    lazy = TTLoRAMoE.from_pack(pack, backbone=base, lazy=True)
    assert [r["pool_score"] for r in lazy.predict(TEXTS)] == pytest.approx(
        [r["pool_score"] for r in rows], abs=1e-4)


def test_forced_expert_without_router_scores_has_no_pool_fields(pack, base):
    moe = TTLoRAMoE.from_pack(pack, backbone=base)
    encoded, forced = moe.prepare(TEXTS, expert="cola")
    scores = moe.score(encoded, forced, route=False)
    assert scores.pool_score is None
    row = moe.answers(encoded, scores)[0]
    assert row["in_pool"] is None and row["pool_score"] is None


def test_detector_reuses_the_router_pools_bit_for_bit(pack, base):
    moe = TTLoRAMoE.from_pack(pack, backbone=base)
    encoded, _ = moe.prepare(TEXTS, [None, "It was fine.", None, "A pair."])
    batch = encoded.batch(list(range(len(encoded))), moe.backbone.device)
    feats = moe._router_features(encoded.texts, encoded.text_pairs)
    states, _, logits, state_feats = moe._route_states(batch, feats)
    reused = moe._pool_dense(batch, states, state_feats)
    recomputed = moe._pool_dense(batch, states)           # per-segment pools of the states again
    assert torch.equal(reused, recomputed)
    plan = [[2, 0], [3, 1]]                 # scored at once in plan order, split per micro-batch
    order = torch.tensor([2, 0, 3, 1])
    parts = moe._pool_scores(plan, [reused[order[:2]], reused[order[2:]]],
                             [logits[order[:2]], logits[order[2:]]], encoded.texts, encoded.text_pairs)
    whole = moe.openworld.score(reused, logits, encoded.texts, encoded.text_pairs)
    torch.testing.assert_close(torch.cat(parts), whole[order], rtol=0, atol=1e-6)


def test_forced_rows_with_route_false_skip_router_and_detector(pack, base):
    moe = TTLoRAMoE.from_pack(pack, backbone=base)
    calls = []
    moe.router.register_forward_hook(lambda *_: calls.append(1))
    names = ["cola", "sst2", "sst2", "cola"]
    routed = moe.predict(TEXTS, expert=names)
    assert calls and all(r["pool_score"] is not None for r in routed)
    calls.clear()
    fast = moe.predict(TEXTS, expert=names, route=False)
    assert calls == []                                    # the router never ran
    for row, ref in zip(fast, routed):
        assert row["router_probs"] == {} and row["in_pool"] is None and row["pool_score"] is None
        assert (row["expert"], row["label"], row["label_probs"]) == (
            ref["expert"], ref["label"], ref["label_probs"])
    with pytest.raises(MoEError, match="route=False needs expert"):
        moe.predict(TEXTS, route=False)


def test_abstain_mode(pack, base):
    moe = TTLoRAMoE.from_pack(pack, backbone=base)
    moe.openworld.scorer.threshold = math.inf            # every row is out of the pool now
    plain = moe.predict(TEXTS)
    assert all(r["in_pool"] is False and r["expert"] in moe.names and r["label"] is not None
               for r in plain)                          # default: the paper's top-1 answer
    abstained = moe.predict(TEXTS, abstain=True)
    for row, ref in zip(abstained, plain):
        assert row["expert"] is None and row["task"] is None and row["label"] is None
        assert row["label_probs"] == {} and row["router_probs"] == ref["router_probs"]
        assert row["pool_score"] == pytest.approx(ref["pool_score"])
    moe.openworld.scorer.threshold = -math.inf           # every row in the pool: answered
    assert all(r["expert"] is not None for r in moe.predict(TEXTS, abstain=True))


def test_lower_cased_inputs_route_the_same(pack, base):
    moe = TTLoRAMoE.from_pack(pack, backbone=base)
    texts = TEXTS + ["Is This A Question About PARIS?", "It's GREAT."]
    cased, lower = moe.predict(texts), moe.predict([t.lower() for t in texts])
    assert [r["expert"] for r in cased] == [r["expert"] for r in lower]
    assert [r["router_probs"] for r in cased] == [pytest.approx(r["router_probs"], abs=1e-5) for r in lower]
    assert [r["pool_score"] for r in cased] == pytest.approx([r["pool_score"] for r in lower], abs=1e-4)


def test_predict_json_and_abstain_flags(capsys, pack):
    code, out, _ = run_cli(capsys, "predict", "--pack", pack, "--json", *TEXTS[:2])
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert all(isinstance(r["in_pool"], bool) and isinstance(r["pool_score"], float) for r in rows)
    code, out, _ = run_cli(capsys, "predict", "--pack", pack, "--abstain", *TEXTS[:2])
    assert code == 0 and len(out.splitlines()) == 2 and "pool=" in out


def test_add_expert_keeps_old_bytes_and_routes_the_new_task(capsys, pack_copy, base, tmp_path):
    new = tiny_expert(base, "mrpc", seed=5)
    store.save_expert(new, tmp_path / "mrpc")
    old = {name: tree_hashes(pack_copy / "experts" / name) for name in ("cola", "sst2")}
    code, out, err = run_cli(capsys, "add-expert", "--pack", pack_copy, tmp_path / "mrpc",
                             "--rows", "80", "--evaluate", "30", "--data-dir", SAMPLES, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert {name: tree_hashes(pack_copy / "experts" / name) for name in old} == old
    assert info["experts"] == ["cola", "sst2", "mrpc"]
    assert info["new_accuracy"] >= 0.8                   # pairs vs single sentences: easy here
    assert abs(info["old_accuracy_after"] - info["old_accuracy_before"]) <= 0.05
    loaded = store.load_pack(pack_copy)
    grown = loaded.build_router()
    assert grown.num_experts == 3 and grown.config.added_experts == 1
    moe = TTLoRAMoE.from_pack(pack_copy, backbone=base)
    assert moe.openworld.num_classes == 3
    rows = moe.predict(["The company said profits rose."], ["Profits went up, the firm said."])
    assert rows[0]["expert"] == "mrpc" and isinstance(rows[0]["in_pool"], bool)
    # the old experts' logits are the frozen router's: between old experts nothing changes
    before = store.load_pack(pack_copy).build_router()
    assert before.base.num_experts == 2
    # a second add of the same name is refused, with one line
    code, _, err = run_cli(capsys, "add-expert", "--pack", pack_copy, tmp_path / "mrpc",
                           "--data-dir", SAMPLES)
    assert code == 2 and "already has an expert" in err


@pytest.mark.parametrize("kind", ["lora", "other shapes"])
def test_add_expert_refuses_an_expert_the_pack_cannot_serve_before_writing(capsys, pack_copy,
                                                                           base, tmp_path, kind):
    """Once: "added expert", exit 0, and every later predict on the pack failed."""
    if kind == "lora":
        expert = tiny_expert(base, "rte", seed=3, method="lora")
    else:
        expert = tiny_expert(base, "rte", seed=3, shapes={"query": [4, 12, 6, 8]})
    store.save_expert(expert, tmp_path / "rte")
    before = tree_hashes(pack_copy)
    code, _, err = run_cli(capsys, "add-expert", "--pack", pack_copy, tmp_path / "rte",
                           "--data-dir", SAMPLES)
    assert code == 2 and ("TT-LoRA experts only" if kind == "lora" else "same --targets") in err
    assert tree_hashes(pack_copy) == before
    assert TTLoRAMoE.from_pack(pack_copy, backbone=base).predict(["fine"])[0]["expert"]


def test_add_expert_needs_replay_rows(capsys, pack_copy, base, tmp_path):
    for name in (store.REPLAY_CONFIG_FILE, store.REPLAY_WEIGHTS_FILE):
        (pack_copy / name).unlink()
    store.save_expert(tiny_expert(base, "rte", seed=3), tmp_path / "rte")
    code, _, err = run_cli(capsys, "add-expert", "--pack", pack_copy, tmp_path / "rte",
                           "--data-dir", SAMPLES)
    assert code == 2 and "replay" in err


# ----------------------------------------------------------------------------- hostile files


def _rewrite_tensors(path: Path, change) -> None:
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(path))
    change(tensors)
    path.unlink()
    save_file(tensors, str(path))


CORRUPTIONS = {
    "truncated weights": lambda p: (p / store.POOL_WEIGHTS_FILE).write_bytes(
        (p / store.POOL_WEIGHTS_FILE).read_bytes()[:1000]),
    "garbage header": lambda p: (p / store.POOL_WEIGHTS_FILE).write_bytes(b"\xff" * 64),
    "not JSON": lambda p: (p / store.POOL_CONFIG_FILE).write_text("{not json"),
    "threshold a string": lambda p: _edit_json(p / store.POOL_CONFIG_FILE, threshold="high"),
    "unknown component": lambda p: _edit_json(p / store.POOL_CONFIG_FILE, weights={"magic": 1.0}),
    "other experts": lambda p: _edit_json(p / store.POOL_CONFIG_FILE, experts=["cola", "qqp"]),
    "layer too deep": lambda p: _edit_json(p / store.POOL_CONFIG_FILE, layer=0),
    "NaN in the bank": lambda p: _rewrite_tensors(p / store.POOL_WEIGHTS_FILE,
                                                  lambda t: t["bank"].fill_(float("nan"))),
    "labels out of range": lambda p: _rewrite_tensors(p / store.POOL_WEIGHTS_FILE,
                                                      lambda t: t["bank_labels"].fill_(7)),
    "a link": lambda p: _link(p / store.POOL_WEIGHTS_FILE),
    "lm_tables without buckets": lambda p: _no_buckets(p),
    "scale of 1e-38": lambda p: _rewrite_tensors(p / store.POOL_WEIGHTS_FILE,
                                                 lambda t: t["scale"].fill_(1e-38)),
    "means of 3e38": lambda p: _rewrite_tensors(p / store.POOL_WEIGHTS_FILE,
                                                lambda t: t["means"].fill_(3e38)),
    "threshold NaN in the JSON": lambda p: (p / store.POOL_CONFIG_FILE).write_text(
        json.dumps({**json.loads((p / store.POOL_CONFIG_FILE).read_text()), "threshold": math.nan})),
    "replay offsets": lambda p: _rewrite_tensors(p / store.REPLAY_WEIGHTS_FILE,
                                                 lambda t: t["replay.ngram_ptr"].fill_(3)),
    "replay ids": lambda p: _rewrite_tensors(p / store.REPLAY_WEIGHTS_FILE,
                                             lambda t: t["replay.ngram_ids"].fill_(-1)),
}


def _no_buckets(pack: Path) -> None:
    """lm_tables of shape [2, 0, E] and a manifest that agrees (once: SIGFPE in predict)."""
    _rewrite_tensors(pack / store.POOL_WEIGHTS_FILE,
                     lambda t: t.__setitem__("lm_tables", t["lm_tables"][:, :0].contiguous()))
    data = json.loads((pack / store.POOL_CONFIG_FILE).read_text())
    data["tensors"]["lm_tables"]["shape"][1] = 0
    (pack / store.POOL_CONFIG_FILE).write_text(json.dumps(data))


def test_predict_on_a_pack_with_a_zero_dimension_exits_with_a_message(pack_copy, base):
    """In a child process: the SIGFPE this case once raised would kill the test run."""
    import subprocess
    import sys

    _no_buckets(pack_copy)
    done = subprocess.run([sys.executable, "-m", "ttmoe_core", "predict", "--pack", str(pack_copy),
                           "fine"], capture_output=True, text=True, timeout=300)
    assert done.returncode == cli.EXIT_USAGE, done.stderr[-2000:]
    assert "lm_tables" in done.stderr and "at least 1" in done.stderr


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _link(path: Path) -> None:
    target = path.with_name("elsewhere.bin")
    path.rename(target)
    path.symlink_to(target)


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_pool_and_replay_files_are_store_errors(pack_copy, base, case):
    CORRUPTIONS[case](pack_copy)
    manifest = store.read_pack_manifest(pack_copy)
    with pytest.raises(store.StoreError):
        if case.startswith("replay"):
            poolfiles.read_replay(pack_copy, manifest, 2)
        else:
            poolfiles.read_pool(pack_copy, manifest)
    if not case.startswith("replay"):
        with pytest.raises(store.StoreError):
            TTLoRAMoE.from_pack(pack_copy, backbone=base)


@pytest.mark.parametrize("file", [store.POOL_WEIGHTS_FILE, store.POOL_CONFIG_FILE,
                                  store.REPLAY_WEIGHTS_FILE, store.REPLAY_CONFIG_FILE])
def test_random_byte_flips_load_or_fail_as_store_errors(pack_copy, file):
    """Seeded fuzz: flipped bytes (header and data) give a detector / replay or a StoreError,
    never another exception."""
    import random

    rng = random.Random(file)
    original = (pack_copy / file).read_bytes()
    manifest = store.read_pack_manifest(pack_copy)
    failures = 0
    for _ in range(12):
        mutated = bytearray(original)
        for _ in range(rng.randint(1, 4)):
            mutated[rng.randrange(min(len(mutated), 3000))] = rng.randrange(256)
        (pack_copy / file).write_bytes(bytes(mutated))
        try:
            if "replay" in file:
                poolfiles.read_replay(pack_copy, manifest, 2)
            else:
                poolfiles.read_pool(pack_copy, manifest)
        except store.StoreError:
            failures += 1
    assert failures > 0


def test_retraining_the_router_removes_its_stale_detector(pack_copy):
    loaded = store.load_pack(pack_copy)
    store.save_router(pack_copy, loaded.build_router(), loaded.names, {}, store.BackboneInfo(
        **loaded.base_model))
    assert not any((pack_copy / n).exists() for n in store.ROUTER_COMPANIONS)


def test_router_page_jobs_write_replay_rows_for_ngram_routers(base, tmp_path):
    from ttmoe_core.services import workflows

    pairs = [("cola", "cola"), ("sst2", "sst2")]
    train = routing.routing_data(pairs, "train", 20, SAMPLES)
    model = routing.build(routing.RouterConfig(variant="ngram", layer=1, hidden=8), 2,
                          base.info.hidden_size, base.info.num_layers)
    result = {"train": train, "backbone": base, "names": ["cola", "sst2"]}
    writer = workflows._replay_writer(model, result)
    writer(tmp_path)
    manifest = {"experts": ["cola", "sst2"], "base_model": base.info.to_dict()}
    source, sets = poolfiles.read_replay(tmp_path, manifest, 2)
    assert source == "hidden" and sets["replay"]["labels"].tolist().count(0) == 20
    assert sets["replay"]["phi_hidden"].shape == (40, 8) and "calibration" not in sets
    fusion = routing.build(routing.RouterConfig(variant="fusion", layer=1, hidden=8), 2,
                           base.info.hidden_size, base.info.num_layers)
    assert workflows._replay_writer(fusion, result) is None


def test_replay_round_trip_is_exact_for_ngrams(tmp_path):
    ids = torch.tensor([[5, 9, 0], [7, 0, 0], [1, 2, 3]])
    weights = torch.tensor([[0.5, 0.25, 0.0], [1.0, 0.0, 0.0], [0.125, 0.5, 0.75]])
    ptr, flat_ids, flat_w = poolfiles._csr(ids, weights)
    assert ptr.tolist() == [0, 2, 3, 6]
    back_ids, back_w = poolfiles._padded(ptr, flat_ids, flat_w)
    assert torch.equal(back_ids, ids) and torch.equal(back_w, weights)


def test_recipe_rows_balance_and_sentences():
    texts = ["a phrase", "this is a whole sentence with eight words .", "short one !",
             "x", "y", "z"]
    data = routing.RoutingData(texts, [None] * 6, torch.tensor([0, 0, 0, 1, 1, 1]), ["sst2", "cola"], {})
    rows, index = routing.recipe_rows(data, [("sst2", "sst2"), ("cola", "cola")], cap=4)
    chosen = [rows.texts[i] for i in index.tolist()]
    assert chosen[:4] == [texts[1]] * 4                   # sst2: only its whole sentence, repeated
    assert len(chosen[4:]) == 4 and set(chosen[4:]) == {"x", "y", "z"}   # all, one repeated
    assert len(set(rows.texts)) == len(rows.texts)        # features once a row
    assert routing.sentence_level("It was great fun to watch , really .")
    assert not routing.sentence_level("great fun")


# ----------------------------------------------------------------------------- the demo pack


@pytest.mark.slow
def test_demo_pack_reports_in_pool_and_says_when_nothing_fits(embedded):
    from ttmoe_core.services.workspace import default_pack

    moe = TTLoRAMoE.from_pack(default_pack(), backbone=embedded)
    assert moe.openworld is not None and moe.router.config.variant == "ngram"
    reviews = moe.predict(["The acting was wooden and the plot made no sense.",
                           "I loved every minute of it."])     # the examples: fusion said cola
    assert reviews[0]["expert"] == "sst2" and all(r["in_pool"] for r in reviews)
    # a socialiqa row (a question over a story with options): no expert's task
    outside = moe.predict(["Robin went to school with Jan and went to her first class with her as "
                           "well. What will Robin want to do next?"],
                          ["(A) go home (B) sleep (C) work in class"], abstain=True)
    assert outside[0]["in_pool"] is False and outside[0]["expert"] is None
