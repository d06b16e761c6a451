"""Budget counts: the paper's figures, and exact agreement with models and libraries built in code."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import (
    BertConfig,
    BertModel,
    DistilBertConfig,
    DistilBertModel,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    RobertaConfig,
    RobertaModel,
)

from ttmoe_core import tt
from ttmoe_core.budget import (
    PAPER_PRESET,
    PRESETS,
    BudgetReport,
    compare_methods,
    compute_budget,
    dims_from_config,
    resolve_model,
)

PAPER_SHAPES = {"q_proj": [16, 8, 4, 4, 4, 4, 8, 16], "v_proj": [16, 16, 4, 2, 2, 16, 16]}

TINY_BERT = BertConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=96, vocab_size=100, max_position_embeddings=64)
# head_dim * heads (64) differs from hidden (48), and kv heads < heads: exercises both
TINY_LLAMA = LlamaConfig(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, head_dim=16, intermediate_size=80, vocab_size=100,
                         tie_word_embeddings=False)


def num_params(module: torch.nn.Module, name_part: str = "") -> int:
    return sum(p.numel() for n, p in module.named_parameters() if name_part in n)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# ----------------------------------------------------------------------------- paper figures


def test_paper_tt_lora_and_lora_figures() -> None:
    tt_report = compute_budget("llama-3.2-1b", "tt-lora", rank=5, targets=["q_proj", "v_proj"],
                               shapes=PAPER_SHAPES)
    lora_report = compute_budget("llama-3.2-1b", "lora", rank=16, targets=["q_proj", "v_proj"])
    assert tt_report.trainable_params == 33_920
    assert lora_report.trainable_params == 1_703_936
    assert tt_report.lora_params == 1_703_936
    assert tt_report.ratio_to_lora == pytest.approx(33_920 / 1_703_936)
    assert compute_budget(**PAPER_PRESET).trainable_params == 33_920


def test_preset_totals() -> None:
    assert PRESETS["all-minilm-l6-v2"].total_params == 22_713_216
    assert PRESETS["bert-base-uncased"].total_params == 109_482_240
    assert PRESETS["llama-3.2-1b"].total_params == pytest.approx(1.236e9, rel=1e-3)
    assert PRESETS["llama-3.1-8b"].total_params == pytest.approx(8.03e9, rel=1e-3)
    assert PRESETS["roberta-base"].total_params == pytest.approx(124.6e6, rel=1e-3)
    with pytest.raises(TypeError):
        PRESETS["x"] = PRESETS["roberta-base"]  # read-only


def test_tt_counts_equal_core_shapes() -> None:
    report = compute_budget("llama-3.2-1b", rank=5, targets=["q_proj", "v_proj", "down_proj"],
                            shapes={"q_proj": PAPER_SHAPES["q_proj"]})
    dims = PRESETS["llama-3.2-1b"]
    q, v, down = report.modules
    assert q.tt_shape == PAPER_SHAPES["q_proj"]
    m, n = tt.split_shape(PAPER_SHAPES["q_proj"], 2048, 2048)
    assert q.params_per_layer == tt.param_count(tt.core_shapes(m, n, 5))
    for mod, target in ((v, "v_proj"), (down, "down_proj")):  # default factors
        m, n = tt.default_factors(*dims.module_shape(target))
        assert mod.tt_shape == m + n
        assert mod.core_shapes == tt.core_shapes(m, n, 5)
        assert mod.total == tt.param_count(mod.core_shapes) * dims.num_layers
    assert report.trainable_params == sum(mod.total for mod in report.modules)


def test_minilm_default_targets() -> None:
    tt_report = compute_budget("all-minilm-l6-v2", "tt-lora", rank=5)
    lora_report = compute_budget("all-minilm-l6-v2", "lora", rank=16)
    assert tt_report.targets == lora_report.targets == ["query", "value"]
    m, n = tt.default_factors(384, 384)
    assert tt_report.trainable_params == 2 * 6 * tt.param_count(tt.core_shapes(m, n, 5))
    assert lora_report.trainable_params == 2 * 6 * 16 * (384 + 384) == 147_456


# ----------------------------------------------------------------------------- base model totals


@pytest.mark.parametrize("config, model_cls", [
    (TINY_BERT, BertModel),
    (RobertaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   intermediate_size=64, vocab_size=90, max_position_embeddings=40,
                   type_vocab_size=1), RobertaModel),
    (DistilBertConfig(dim=32, n_layers=2, n_heads=4, hidden_dim=64, vocab_size=90,
                      max_position_embeddings=40), DistilBertModel),
    (TINY_LLAMA, LlamaForCausalLM),
    (LlamaConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=4, intermediate_size=64, vocab_size=100,
                 tie_word_embeddings=True, attention_bias=True, mlp_bias=True), LlamaForCausalLM),
    (MistralConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, intermediate_size=64, vocab_size=100),
     MistralForCausalLM),
    (Qwen2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, intermediate_size=64, vocab_size=100,
                 tie_word_embeddings=False), Qwen2ForCausalLM),
], ids=["bert", "roberta", "distilbert", "llama-untied", "llama-tied-bias", "mistral", "qwen2"])
def test_total_params_match_real_module(config, model_cls) -> None:
    dims = dims_from_config(config.to_dict())
    assert dims.total_params == num_params(model_cls(config))
    assert compute_budget(config.to_dict(), "full").trainable_params == dims.total_params


def test_config_json_path_and_folder(tmp_path) -> None:
    (tmp_path / "config.json").write_text(json.dumps(TINY_BERT.to_dict()))
    by_file = resolve_model(str(tmp_path / "config.json"))
    by_folder = resolve_model(tmp_path)
    assert by_file.total_params == by_folder.total_params == num_params(BertModel(TINY_BERT))


# ----------------------------------------------------------------------------- against PEFT


def _peft_lora_params(model: torch.nn.Module, target_modules, rank: int) -> int:
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(model, LoraConfig(r=rank, target_modules=target_modules))
    return sum(p.numel() for n, p in peft_model.named_parameters()
               if ("lora_A" in n or "lora_B" in n) and p.requires_grad)


@pytest.mark.parametrize("target", ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                    "up_proj", "down_proj"])
def test_lora_matches_peft_llama(target: str) -> None:
    report = compute_budget(TINY_LLAMA.to_dict(), "lora", rank=4, targets=[target])
    assert report.trainable_params == _peft_lora_params(LlamaForCausalLM(TINY_LLAMA), [target], 4)


# PEFT target names for our BERT target names ("output.dense" alone would also match attention)
BERT_PEFT_TARGETS = {"query": ["query"], "key": ["key"], "value": ["value"],
                     "attention_output": r".*attention\.output\.dense",
                     "intermediate": ["intermediate.dense"],
                     "output": r".*layer\.\d+\.output\.dense"}


@pytest.mark.parametrize("target", list(BERT_PEFT_TARGETS))
def test_lora_matches_peft_bert(target: str) -> None:
    report = compute_budget(TINY_BERT.to_dict(), "lora", rank=3, targets=[target])
    assert report.trainable_params == _peft_lora_params(BertModel(TINY_BERT),
                                                        BERT_PEFT_TARGETS[target], 3)


def test_lora_matches_peft_bert_query_value() -> None:
    report = compute_budget(TINY_BERT.to_dict(), "lora", rank=8)  # default targets query, value
    assert report.trainable_params == _peft_lora_params(BertModel(TINY_BERT),
                                                        ["query", "value"], 8)


# ----------------------------------------------------------------------------- against `adapters`


@pytest.mark.parametrize("kind, adapters_config", [("pfeiffer", "SeqBnConfig"),
                                                   ("houlsby", "DoubleSeqBnConfig")])
@pytest.mark.parametrize("reduction", [8, 5])
def test_adapter_matches_adapters_library(kind: str, adapters_config: str, reduction: int) -> None:
    import adapters

    model = BertModel(TINY_BERT)
    adapters.init(model)
    model.add_adapter("a", config=getattr(adapters, adapters_config)(reduction_factor=reduction))
    report = compute_budget(TINY_BERT.to_dict(), "adapter", adapter_kind=kind,
                            adapter_reduction=reduction)
    assert report.trainable_params == num_params(model, "adapters.a.")
    assert report.notes  # says that targets are ignored


@pytest.mark.parametrize("num_tasks", [2, 3])
def test_adapterfusion_matches_adapters_library(num_tasks: int) -> None:
    import adapters
    from adapters.composition import Fuse

    model = BertModel(TINY_BERT)
    adapters.init(model)
    names = [f"task{i}" for i in range(num_tasks)]
    for name in names:
        model.add_adapter(name, config=adapters.SeqBnConfig(reduction_factor=8))
    model.add_adapter_fusion(Fuse(*names))  # default "dynamic" fusion config
    report = compute_budget(TINY_BERT.to_dict(), "adapterfusion", num_tasks=num_tasks,
                            adapter_reduction=8)
    fusion = {m.target: m.total for m in report.modules}["fusion"]
    assert fusion == num_params(model, "adapter_fusion_layer")
    assert report.trainable_params == num_params(model, "adapters.") + fusion


# ----------------------------------------------------------------------------- reports


def test_compare_methods_and_serialisation() -> None:
    reports = compare_methods("all-minilm-l6-v2")
    assert [r.label for r in reports] == ["TT-LoRA r5", "LoRA r16", "Adapter (Pfeiffer)",
                                          "Adapter (Houlsby)", "AdapterFusion (1 task)",
                                          "Full fine-tuning"]
    assert reports[-1].trainable_params == 22_713_216
    assert reports[-1].percent_of_base == pytest.approx(100.0)
    for report in reports:
        assert isinstance(report, BudgetReport)
        assert report.bytes_fp32 == 4 * report.trainable_params
        assert report.bytes_bf16 == 2 * report.trainable_params
        data = json.loads(json.dumps(report.to_dict()))
        for key in ("model", "method", "rank", "alpha", "targets", "modules", "trainable_params",
                    "base_params", "percent_of_base", "bytes_fp32", "bytes_bf16", "lora_params",
                    "ratio_to_lora"):
            assert key in data
        assert report.format_table()
    table = compute_budget(**PAPER_PRESET).format_table()
    assert "16,8,4,4 | 4,4,8,16" in table and "33,920" in table


# ----------------------------------------------------------------------------- errors


@pytest.mark.parametrize("kwargs, message", [
    (dict(shapes={"q_proj": [16, 8, 4, 4, 4, 4, 8, 8]}), "does not fit"),
    (dict(targets=["q_proj", "nope"]), "valid targets are q_proj"),
    (dict(targets=["q_proj"], shapes={"v_proj": [16, 16, 4, 2, 2, 16, 16]}), "not among"),
    (dict(rank=0), "rank must be"),
    (dict(method="dora"), "choose from tt-lora"),
    (dict(method="adapter", adapter_kind="lora"), "pfeiffer"),
])
def test_bad_values_raise_helpful_errors(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        compute_budget("llama-3.2-1b", **kwargs)


def test_unknown_preset_and_bad_configs(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown model 'llama-9b'.*llama-3.2-1b"):
        resolve_model("llama-9b")
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        compute_budget(str(bad))
    with pytest.raises(ValueError, match="missing required key.*intermediate_size"):
        dims_from_config({"model_type": "llama", "hidden_size": 8, "num_hidden_layers": 1,
                          "num_attention_heads": 2, "vocab_size": 10})
    with pytest.raises(ValueError, match="unsupported model_type 'gpt2'"):
        dims_from_config({"model_type": "gpt2"})
    with pytest.raises(ValueError, match="does not exist"):
        dims_from_config(tmp_path / "missing.json")
    assert math.isclose(compute_budget("roberta-base").ratio_to_lora,
                        compute_budget("roberta-base").trainable_params
                        / compute_budget("roberta-base", "lora").trainable_params)


# ----------------------------------------------------------------------------- decoder presets

PUBLISHED_TOTALS = {"smollm2-135m": 134_515_008, "qwen2.5-0.5b": 494_032_768,
                    "llama-3.2-3b": 3_212_749_824}   # parameter counts of the published checkpoints


@pytest.mark.parametrize("name", sorted(PUBLISHED_TOTALS))
def test_decoder_presets_match_the_real_models_and_peft(name: str) -> None:
    """Each preset's total equals the published count and the real architecture built from the
    preset's config (on the meta device: no memory); LoRA r16 on q/v equals PEFT's count."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from ttmoe_core.base.dims import _PRESET_CONFIGS

    assert PRESETS[name].total_params == PUBLISHED_TOTALS[name]
    config = dict(_PRESET_CONFIGS[name])
    hf_config = AutoConfig.for_model(config.pop("model_type"), **config)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(hf_config)
    assert num_params(model) == PUBLISHED_TOTALS[name]
    lora = compute_budget(name, "lora", rank=16).trainable_params
    with torch.device("meta"):
        assert lora == _peft_lora_params(model, ["q_proj", "v_proj"], 16)


# ----------------------------------------------------------------------------- train-expert's names


@pytest.mark.parametrize("targets", [["dense"], ["query", "key", "value", "dense"],
                                     ["value", "dense", "query"]])
def test_module_names_as_train_expert_takes_them(targets) -> None:
    """``dense`` (BERT's three per-block linear layers and the pooler's) counts what the engine
    and PEFT really adapt: TT-LoRA with the engine's own per-size shapes, LoRA through PEFT."""
    from ttmoe_core import adapters

    model = BertModel(TINY_BERT)                                  # with its pooler
    tt_report = compute_budget(TINY_BERT.to_dict(), "tt-lora", rank=3, targets=targets)
    shapes = adapters.resolve_shapes(model, targets, None)
    adapters.inject_tt_lora(model, targets, rank=3, alpha=8.0, shapes=shapes)
    assert tt_report.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    lora = compute_budget(TINY_BERT.to_dict(), "lora", rank=4, targets=targets)
    assert lora.trainable_params == _peft_lora_params(BertModel(TINY_BERT), targets, 4)


def test_unknown_module_name_lists_the_aliases() -> None:
    with pytest.raises(ValueError, match="dense"):
        compute_budget(TINY_BERT.to_dict(), "tt-lora", targets=["denser"])
    with pytest.raises(ValueError, match="q_proj"):                 # decoders have no alias
        compute_budget(TINY_LLAMA.to_dict(), "tt-lora", targets=["dense"])
