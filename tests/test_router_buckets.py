"""The ngram router's table size (``RouterConfig.buckets``): it sizes the hashing and the table,
round-trips through a pack, an older file without it loads with the default, and a table that
does not fit the declared size, or a size the schema does not allow, is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from tests.tinymodels import tiny_expert
from ttmoe_core import routing, store
from ttmoe_core.cli import build_parser
from ttmoe_core.cli.args import UsageError
from ttmoe_core.files import schema
from ttmoe_core.store import StoreError

TEXTS = ["a movie with great acting", "why is the sky blue?"]
PAIRS = [None, "Because of scattering."]


@pytest.fixture(scope="module")
def two_experts(tiny_bert):
    return [tiny_expert(tiny_bert, "sst2", seed=0), tiny_expert(tiny_bert, "rte", rank=4, seed=1)]


def _ngram_router(bb, buckets: int | None = None, layer: int = 1):
    extra = {} if buckets is None else {"buckets": buckets}
    config = routing.RouterConfig(variant="ngram", layer=layer, hidden=8, seed=0, **extra)
    router = routing.build(config, 2, bb.info.hidden_size, bb.info.num_layers)
    with torch.no_grad():       # a table that is not all zeros, so a lost weight would show
        router.ngrams.weight.normal_(generator=torch.Generator().manual_seed(1))
    return router


def _pack(tmp_path, bb, experts, router):
    pack = tmp_path / "pack"
    for expert in experts:
        store.append_expert(pack, expert)
    store.save_router(pack, router, [e.name for e in experts], {"accuracy": 0.5}, bb.info)
    return pack


def _edit_config(pack, edit) -> None:
    path = pack / "router_config.json"
    data = json.loads(path.read_text())
    edit(data["config"])
    path.write_text(json.dumps(data))


def test_buckets_size_the_hashing_and_the_table():
    ids, _ = routing.ngram_features(TEXTS, PAIRS, buckets=1 << 8)
    assert 0 <= int(ids.min()) and int(ids.max()) < 4 * 256
    small = routing.build(routing.RouterConfig(variant="ngram", layer=1, hidden=8, buckets=1 << 8), 3, 8, 2)
    large = routing.build(routing.RouterConfig(variant="ngram", layer=1, hidden=8, buckets=1 << 10), 3, 8, 2)
    assert small.ngrams.weight.shape == (4 * 256, 3)
    assert routing.params(large) - routing.params(small) == 4 * (1024 - 256) * 3
    feats = routing.text_features(TEXTS, PAIRS, small.config)
    assert int(feats["ngram_ids"].max()) < 4 * 256


def test_buckets_round_trip_through_a_pack(tiny_bert, two_experts, tmp_path):
    router = _ngram_router(tiny_bert, buckets=1 << 9)
    pack = _pack(tmp_path, tiny_bert, two_experts, router)
    loaded = store.load_pack(pack)
    assert loaded.router_config.buckets == 1 << 9
    rebuilt = loaded.build_router()
    assert rebuilt.ngrams.weight.shape == (4 * 512, 2)
    torch.testing.assert_close(rebuilt.ngrams.weight, router.ngrams.weight, rtol=0, atol=0)


def test_an_older_config_without_buckets_loads_with_the_default(tiny_bert, two_experts, tmp_path):
    pack = _pack(tmp_path, tiny_bert, two_experts, _ngram_router(tiny_bert))
    _edit_config(pack, lambda config: config.pop("buckets"))
    loaded = store.load_pack(pack)
    assert loaded.router_config.buckets == routing.BUCKETS == 1 << 16
    assert loaded.build_router().ngrams.weight.shape == (4 * routing.BUCKETS, 2)


@pytest.mark.parametrize("declared, match", [
    (1 << 10, "do not fit its config"),        # allowed, but not the table's size (2^9)
    (300, "buckets"), (1 << 30, "buckets"), (1 << 7, "buckets"), ("512", "buckets"),
    (512.0, "buckets"), (True, "buckets"), (None, "buckets")])
def test_a_table_that_does_not_fit_its_declared_buckets_is_refused(tiny_bert, two_experts, tmp_path,
                                                                  declared, match):
    pack = _pack(tmp_path, tiny_bert, two_experts, _ngram_router(tiny_bert, buckets=1 << 9))
    _edit_config(pack, lambda config: config.update(buckets=declared))
    with pytest.raises(StoreError, match=match) as caught:
        store.load_pack(pack)
    assert "\n" not in str(caught.value)


def test_router_config_refuses_bad_buckets_whatever_the_variant():
    for bad in (0, 255, 300, 1 << 21, -256, True, 256.0):
        with pytest.raises(routing.RouterError, match="power of two"):
            routing.RouterConfig(variant="linear", buckets=bad).resolved(2)
    assert routing.RouterConfig(variant="ngram", buckets=1 << 20).resolved(2).buckets == 1 << 20


@given(st.one_of(st.integers(-(1 << 22), 1 << 22), st.sampled_from([1 << n for n in range(0, 24)])))
def test_schema_and_config_agree_on_the_allowed_buckets(value):
    allowed = value in {1 << n for n in range(8, 21)}
    settings = {"variant": "ngram", "buckets": value}
    if allowed:
        schema.validate(settings, "router_settings", "router_config.json")
        assert routing.check_buckets(value) == value
    else:
        with pytest.raises(schema.SchemaError, match="buckets"):
            schema.validate(settings, "router_settings", "router_config.json")
        with pytest.raises(routing.RouterError):
            routing.check_buckets(value)


def test_train_router_flag_takes_a_power_of_two_only():
    parser = build_parser()
    args = parser.parse_args(["train-router", "--pack", "p", "--variant", "ngram", "--buckets", "4096"])
    assert args.buckets == 4096
    assert parser.parse_args(["train-router", "--pack", "p"]).buckets == routing.BUCKETS
    for bad, words in (("300", "power of two"), ("8", "power of two"), ("1e3", "not an integer")):
        with pytest.raises(UsageError, match=f"--buckets: .*{words}"):
            parser.parse_args(["train-router", "--pack", "p", "--buckets", bad])


def test_a_small_table_trains_saves_and_grows_through_the_cli(tmp_path):
    """train-router --buckets 256 writes a 1,024-row table and replay n-gram ids below it;
    add-expert reads them against that table and grows it by a column; the replay rows of a
    larger table are refused for a smaller one."""
    from tests.tinymodels import SAMPLES, saved_tiny_bert
    from ttmoe_core import cli
    from ttmoe_core.store import detector as poolfiles

    base = saved_tiny_bert(tmp_path / "base")
    pack = tmp_path / "pack"
    for i, task in enumerate(("cola", "sst2")):
        store.append_expert(pack, tiny_expert(base, task, seed=i))
    assert cli.main(["train-router", "--pack", str(pack), "--variant", "ngram", "--all-rows",
                     "--buckets", "256", "--cap", "40", "--epochs", "2", "--layer", "1",
                     "--eval-per-task", "10", "--data-dir", str(SAMPLES), "--quiet", "--json"]) == 0
    loaded = store.load_pack(pack)
    assert loaded.router_config.buckets == 256
    assert loaded.build_router().ngrams.weight.shape == (4 * 256, 2)
    _, sets = poolfiles.read_replay(pack, loaded.manifest, 2, buckets=256)
    assert 0 < int(sets["replay"]["ngram_ids"].max()) < 4 * 256
    store.save_expert(tiny_expert(base, "mrpc", seed=5), tmp_path / "mrpc")
    assert cli.main(["add-expert", "--pack", str(pack), str(tmp_path / "mrpc"), "--rows", "20",
                     "--data-dir", str(SAMPLES), "--json"]) == 0
    grown = store.load_pack(pack).build_router()
    assert grown.config.buckets == 256 and grown.ngrams.shape == (4 * 256, 1)

    # replay rows hashed into 2^16 buckets do not fit a 2^8 table: refused, not an IndexError
    big = tmp_path / "big"
    for i, task in enumerate(("cola", "sst2")):
        store.append_expert(big, tiny_expert(base, task, seed=i))
    assert cli.main(["train-router", "--pack", str(big), "--variant", "ngram", "--all-rows",
                     "--cap", "40", "--epochs", "1", "--layer", "1", "--eval-per-task", "10",
                     "--data-dir", str(SAMPLES), "--quiet", "--json"]) == 0
    with pytest.raises(StoreError, match=r"ngram_ids outside 0\.\.1023"):
        poolfiles.read_replay(big, store.load_pack(big).manifest, 2, buckets=256)
