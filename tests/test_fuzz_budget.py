"""Property-based fuzzing of the budget calculator: any config.json a user uploads ends in a
ValueError (SchemaError included) or a correct count, quickly; never another exception, never a hang."""
from __future__ import annotations

import json
import time

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from ttmoe_core import budget, tt
from ttmoe_core.files.schema import SchemaError

PRESETS = {"llama": budget._PRESET_CONFIGS["llama-3.2-1b"], "bert": budget._PRESET_CONFIGS["roberta-base"]}
KEYS = sorted({k for c in PRESETS.values() for k in c} | {"head_dim", "num_key_value_heads",
                                                            "type_vocab_size", "attention_bias"})

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6)


@st.composite
def mutated_configs(draw) -> dict:
    """A preset config with some keys replaced by arbitrary JSON values, some removed, some added."""
    config = dict(PRESETS[draw(st.sampled_from(sorted(PRESETS)))])
    for key in draw(st.lists(st.sampled_from(KEYS), max_size=4)):
        config[key] = draw(json_values)
    for key in draw(st.lists(st.sampled_from(sorted(config)), max_size=2)):
        config.pop(key, None)
    config.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    return config


def _check(config, method: str) -> None:
    started = time.perf_counter()
    try:
        report = budget.compute_budget(config, method)
    except ValueError:
        pass
    else:
        assert isinstance(report.trainable_params, int) and report.trainable_params > 0
        assert report.base_params > 0 and report.trainable_params <= max(report.base_params, 1) * 4
    assert time.perf_counter() - started < 2.0


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow],
          database=None)
@given(mutated_configs(), st.sampled_from(["tt-lora", "lora", "adapter", "full"]))
@example({"model_type": "llama", "hidden_size": 2**61 - 1, "num_hidden_layers": 1,
          "intermediate_size": 8, "num_attention_heads": 1, "vocab_size": 10}, "tt-lora")
@example({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1, "intermediate_size": 8,
          "num_attention_heads": 4, "vocab_size": 10, "num_key_value_heads": [2]}, "tt-lora")
@example({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1, "intermediate_size": 8,
          "num_attention_heads": 4, "vocab_size": 10, "head_dim": "16"}, "lora")
@example({"model_type": "bert", "hidden_size": 64, "num_hidden_layers": 1, "intermediate_size": 8,
          "num_attention_heads": 4, "vocab_size": 10, "max_position_embeddings": 8,
          "type_vocab_size": "2"}, "full")
@example({"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 1, "intermediate_size": 8,
          "num_attention_heads": 16, "vocab_size": 10}, "tt-lora")
@example({"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 1, "intermediate_size": 8,
          "num_attention_heads": 4, "num_key_value_heads": 3, "vocab_size": 10}, "lora")
def test_any_config_gives_a_value_error_or_a_count(config, method):
    _check(config, method)


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(max_size=60) | st.binary(max_size=60).map(lambda b: b.decode("latin-1")))
def test_any_config_file_text_gives_a_value_error_or_a_count(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("cfg") / "config.json"
    path.write_text(text, encoding="utf-8")
    _check(str(path), "tt-lora")


@pytest.mark.parametrize("key, value, field", [
    ("num_key_value_heads", [2], "num_key_value_heads"), ("head_dim", "16", "head_dim"),
    ("hidden_size", 2**61 - 1, "hidden_size"), ("tie_word_embeddings", "yes", "tie_word_embeddings"),
])
def test_schema_errors_name_the_file_and_field(tmp_path, key, value, field):
    config = dict(PRESETS["llama"], **{key: value})
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    with pytest.raises(SchemaError, match=rf"config.json: field \$\.{field}"):
        budget.compute_budget(str(path))


def test_factorisation_is_bounded_for_any_integer():
    started = time.perf_counter()
    for n in (2**61 - 1, 10**30 + 1, 2**40 + 1):
        with pytest.raises(ValueError, match="larger than"):
            tt.factorize(n, 3)
    for bad in (0, -5, 2.5, True, "8"):
        with pytest.raises(ValueError):
            tt.prime_factors(bad)
    assert tt.factorize(2**40, 4) == [1024, 1024, 1024, 1024]
    assert tt.prime_factors(1_099_511_627_689) == [1_099_511_627_689]   # the largest prime < 2^40
    assert time.perf_counter() - started < 5.0
