"""Well-formed files holding hostile values (issue 33): zeros where the maths divides, 3e38 and
1e-38 where training never goes, NaN in JSON, metrics and histories the pages would trip on,
duplicate or missing labels, tampered checkpoint state, JSON nested 100k levels deep. Each one
ends in the engine's own error naming the file; no NaN answer leaves the engine."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file
from torch import nn

from tests.tinymodels import tiny_bert, tiny_expert, tiny_pack
from ttmoe_core import budget, experts, store, tasks
from ttmoe_core.errors import CheckpointError, DataError, MoEError, StoreError
from ttmoe_core.files import safefs, tensorfile
from ttmoe_core.moe import TTLoRAMoE
from ttmoe_core.moe.mixture import Scores, check_finite
from ttmoe_core.report import status as report_status

DEEP = "[" * 100_000 + "]" * 100_000
HOSTILE = [3e38, -3e38, 1e7, float("nan"), float("inf"), float("-inf")]


@pytest.fixture(scope="module")
def bb():
    return tiny_bert()


@pytest.fixture(scope="module")
def expert(bb):
    return tiny_expert(bb, "sst2", rank=3, steps=2)


@pytest.fixture()
def expert_dir(tmp_path, expert):
    return store.save_expert(expert, tmp_path / "sst2")


def _rewrite(path: Path, change) -> None:
    tensors = load_file(str(path))
    change(tensors)
    path.unlink()
    save_file(tensors, str(path))


def _edit_config(folder: Path, change) -> None:
    path = folder / store.CONFIG_FILE
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


# ----------------------------------------------------------------------------- tensors


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(value=st.sampled_from(HOSTILE), which=st.integers(0, 1000))
def test_a_hostile_value_in_any_expert_tensor_is_refused(tmp_path_factory, expert, value, which):
    folder = store.save_expert(expert, tmp_path_factory.mktemp("e") / "x")
    weights = folder / store.WEIGHTS_FILE
    keys = sorted(load_file(str(weights)))
    key = keys[which % len(keys)]
    _rewrite(weights, lambda t: t[key].view(-1).__setitem__(0, value))
    with pytest.raises(StoreError, match=key.replace(".", r"\.")):
        store.load_expert(folder)


def test_the_magnitude_bound_sits_far_above_what_training_makes(expert):
    peak = max(float(t.abs().max()) for t in expert.tensors.values())
    assert peak < tensorfile.MAX_ABS / 100


def test_a_zero_dimension_is_refused_even_when_the_manifest_agrees(tmp_path):
    path = tmp_path / "t.safetensors"
    save_file({"lm_tables": torch.zeros(2, 0, 6), "ok": torch.ones(2)}, str(path))
    header = tensorfile.read_header(path, "pool")
    tensorfile.check_manifest(header, {"lm_tables": {"shape": [2, 0, 6], "dtype": "float32"},
                                       "ok": {"shape": [2], "dtype": "float32"}}, "pool")
    with pytest.raises(StoreError, match=r"lm_tables has shape \[2, 0, 6\]"):
        tensorfile.load(path, header, "pool")
    assert tensorfile.load(path, header, "pool", empty_ok={"lm_tables"})["ok"].tolist() == [1, 1]


def test_router_weights_of_3e38_are_refused_at_load(tmp_path, bb):
    pack, _, _ = tiny_pack(tmp_path / "pack", bb, ["sst2", "cola"], epochs=1)
    weights = pack / store.ROUTER_WEIGHTS_FILE
    key = sorted(load_file(str(weights)))[0]
    _rewrite(weights, lambda t: t[key].fill_(3e38))
    with pytest.raises(StoreError, match="router"):
        store.load_pack(pack)


def test_answers_are_checked_finite_before_they_leave_the_engine(tmp_path, bb):
    pack, _, _ = tiny_pack(tmp_path / "pack", bb, ["sst2", "cola"], epochs=1)
    moe = TTLoRAMoE.from_pack(pack, backbone=bb)
    assert all(math.isfinite(p) for row in moe.predict(["fine"]) for p in row["router_probs"].values())
    with torch.no_grad():
        for parameter in moe.router.parameters():
            parameter.fill_(3e38)                 # what a file of 3e38 would have made
    with pytest.raises(MoEError, match="router"):
        moe.predict(["fine", "bad"])


def test_check_finite_names_the_expert_and_ignores_masked_labels():
    logits = torch.tensor([[0.1, 0.2, -math.inf], [0.3, math.nan, -math.inf]])
    good = Scores(torch.tensor([1, 0]), None, logits, (False, False))
    with pytest.raises(MoEError, match="'b'"):
        check_finite(Scores(torch.tensor([0, 1]), None, logits, (False, False)), ["a", "b"], [2, 3])
    assert check_finite(Scores(torch.tensor([0, 0]), None, logits[:1].repeat(2, 1), (False, False)),
                        ["a", "b"], [2, 3]) is not None
    with pytest.raises(MoEError, match="'a'"):
        check_finite(good, ["a", "b"], [2, 2])
    probs = torch.tensor([[math.nan, 1.0], [0.5, 0.5]])
    with pytest.raises(MoEError, match="router"):
        check_finite(Scores(torch.tensor([0, 0]), probs, logits[:1].repeat(2, 1), (False, False)),
                     ["a", "b"], [2, 2])


# ----------------------------------------------------------------------------- strict JSON


def test_json_is_written_strictly(tmp_path):
    with pytest.raises(StoreError, match="NaN"):
        safefs.write_json(tmp_path / "a.json", {"x": float("nan")})
    assert not list(tmp_path.iterdir())
    assert safefs.nan_to_null({"p": [float("nan"), 1.0, float("inf")]}) == {"p": [None, 1.0, None]}


def test_an_undefined_metric_is_stored_as_null_and_read_back(tmp_path, expert):
    expert.metrics = {**expert.metrics, "pearson": float("nan")}
    try:
        folder = store.save_expert(expert, tmp_path / "e")
    finally:
        expert.metrics.pop("pearson")
    assert "NaN" not in (folder / store.CONFIG_FILE).read_text()
    assert store.load_expert(folder).metrics["pearson"] is None


@pytest.mark.parametrize("text", [DEEP, '{"a": NaN}', "[1, 2", "\xff"])
def test_parse_json_refuses_depth_nan_and_garbage(text):
    with pytest.raises(StoreError):
        safefs.parse_json(text.encode("utf-8", "surrogateescape") if text != "\xff" else b"\xff", "x")


def test_every_json_reader_bounds_its_depth(tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    with pytest.raises(ValueError, match="levels deep"):
        budget.dims_from_config(str(deep))
    with pytest.raises(DataError, match="levels deep"):
        tasks.load_file(deep)
    lines = tmp_path / "deep.jsonl"
    lines.write_text('{"text": "a", "label": 0}\n' + DEEP + "\n")
    with pytest.raises(DataError, match="line 2 nests"):
        tasks.load_file(lines)
    assert report_status._read_json(deep) is None


# ----------------------------------------------------------------------------- what pages show


PAGE_TRAPS = {
    "confusion of strings": lambda d: d["metrics"].update(confusion=[["a", "b"], [1, 2]]),
    "confusion not square": lambda d: d["metrics"].update(confusion=[[1, 2, 3], [1, 2, 3]]),
    "history step a string": lambda d: d.update(history=[{"step": "x", "loss": 1.0}]),
    "history without loss": lambda d: d.update(history=[{"step": 1}]),
    "history a string": lambda d: d.update(history="x"),
    "accuracy a string": lambda d: d["metrics"].update(accuracy="high"),
    "duplicate labels": lambda d: d.update(label_names=["positive", "positive"]),
    "no labels for sst2": lambda d: d.update(label_names=[]),
}


@pytest.mark.parametrize("case", sorted(PAGE_TRAPS))
def test_metrics_history_and_labels_are_typed(expert_dir, case):
    _edit_config(expert_dir, PAGE_TRAPS[case])
    with pytest.raises(StoreError):
        store.load_expert(expert_dir)


def test_a_valid_expert_passes_the_typed_schema(expert_dir):
    loaded = store.load_expert(expert_dir)
    assert loaded.metrics["confusion"] and loaded.history[0]["step"] >= 1
    assert experts.label_rates(loaded.metrics["confusion"]) is not None


# ----------------------------------------------------------------------------- checkpoints


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Identity()
        self.w = nn.Parameter(torch.ones(3))


@dataclass(frozen=True)
class _Config:                                 # an ``experts.LoopConfig``
    steps: int = 6
    batch_size: int = 2
    lr: float = 0.1
    warmup_fraction: float = 0.1
    weight_decay: float = 0.0


CONFIG = _Config()


def _run(folder: Path, resume: bool, stop_at: int | None = None) -> list[dict]:
    model = _Model()
    calls = [0]

    def stop() -> bool:
        calls[0] += 1
        return stop_at is not None and calls[0] > stop_at

    return experts.fit(model, lambda rows: (model.w ** 2).sum() * len(rows), 8, CONFIG,
                       torch.Generator().manual_seed(0), should_stop=stop, log_every=1,
                       checkpoint=experts.Checkpointer(folder, every=1, resume=resume))


TAMPERED = {
    "lr a string": lambda d: d["optimizer"]["param_groups"][0].update(lr="x"),
    "a batch row of 1e9": lambda d: d["batches"]["epoch"][0].__setitem__(0, 10**9),
    "a missing key": lambda d: d["loop"].pop("seen"),
    "step 1e12": lambda d: d["loop"].update(step=10**12),
    "step -1000": lambda d: d["loop"].update(step=-1000),
    "step past the cap": lambda d: d["loop"].update(step=7),
    "history a string": lambda d: d["loop"].update(history="x"),
}


@pytest.mark.parametrize("case", sorted(TAMPERED))
def test_a_tampered_checkpoint_state_is_refused(tmp_path, case):
    folder = tmp_path / "ck"
    with pytest.raises(experts.TrainingError):
        _run(folder, resume=False, stop_at=3)
    path = folder / "state.json"
    data = json.loads(path.read_text())
    TAMPERED[case](data)
    path.write_text(json.dumps(data))
    with pytest.raises(CheckpointError):
        _run(folder, resume=True)


def test_an_untampered_checkpoint_resumes_to_the_cap(tmp_path):
    folder = tmp_path / "ck"
    with pytest.raises(experts.TrainingError):
        _run(folder, resume=False, stop_at=3)
    history = _run(folder, resume=True)
    assert history[-1]["step"] == CONFIG.steps


# ----------------------------------------------------------------------------- unbounded inputs


def test_a_huge_input_is_cut_before_tokenising_and_said_truncated(minilm_tokenizer, bb):
    from ttmoe_core.base.backbone import char_limit, encode_rows

    huge = "the movie was great and " * 400_000                       # 9.6 MB
    encoded = encode_rows(minilm_tokenizer, [huge, "fine"], [None, huge[:100]], max_length=32)
    assert len(encoded.texts[0]) == char_limit(32) and encoded.texts[1] == "fine"
    assert encoded.truncated == (True, False)
    # the cut never changes what the model sees: the first 32 tokens are the same
    whole = minilm_tokenizer(huge[:20_000], truncation=True, max_length=32)["input_ids"]
    assert list(encoded.input_ids[0]) == whole


@pytest.mark.parametrize("label", [20_000_000, 300_000_000, 10_000])
def test_an_upload_label_cannot_make_millions_of_classes(tmp_path, label):
    upload = tmp_path / "up.jsonl"
    upload.write_text("".join(json.dumps({"text": f"row {i}", "label": i % 2}) + "\n"
                              for i in range(4)) + json.dumps({"text": "x", "label": label}) + "\n")
    with pytest.raises(DataError, match="at most 10,000"):
        tasks.load_file(upload)


def test_ten_thousand_classes_are_still_read(tmp_path):
    upload = tmp_path / "up.jsonl"
    upload.write_text(json.dumps({"text": "a", "label": 9_999}) + "\n"
                      + json.dumps({"text": "b", "label": 0}) + "\n")
    assert len(tasks.load_file(upload).label_names) == 10_000


_json = st.recursive(st.none() | st.integers() | st.text(alphabet='[]{}"\\ab'),
                     lambda inner: st.lists(inner, max_size=3)
                     | st.dictionaries(st.text(alphabet='[]{}"\\ab', max_size=4), inner, max_size=3),
                     max_leaves=30)


def _depth(value) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=300, deadline=None)
@given(value=_json)
def test_json_depth_matches_the_parsed_nesting(value):
    assert safefs.json_depth(json.dumps(value)) == _depth(value)


def test_a_max_length_beyond_the_model_s_positions_is_refused_when_the_pack_opens(tmp_path, bb):
    pack, _, _ = tiny_pack(tmp_path / "pack", bb, ["sst2", "cola"], epochs=1)
    path = pack / store.ROUTER_CONFIG_FILE
    data = json.loads(path.read_text())
    data["config"]["max_length"] = 100_000
    path.write_text(json.dumps(data))
    with pytest.raises(StoreError, match="max_length 100000 is more than the base model takes"):
        TTLoRAMoE.from_pack(pack, backbone=bb)
