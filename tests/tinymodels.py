"""Plain builders of tiny models, experts and packs for fast tests (no download, CPU, seconds).

Import explicitly: ``from tests.tinymodels import tiny_bert, tiny_expert, tiny_pack``.
Tests must not mutate a backbone they share (``experts.build_expert_model`` deep-copies).
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Sequence
from pathlib import Path

import torch

from ttmoe_core import experts, routing, store, tasks
from ttmoe_core.base import backbone

SAMPLES = Path(__file__).resolve().parents[1] / "assets" / "samples"


@functools.lru_cache(maxsize=1)
def minilm_tokenizer():
    """The embedded MiniLM tokenizer (vocab 30,522), loaded offline once per process."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(backbone.default_model_path()), local_files_only=True)


def tiny_bert_model(seed: int = 0):
    """A randomly initialised BertModel: hidden 48, 2 layers, 4 heads, intermediate 96."""
    from transformers import BertConfig, BertModel

    config = BertConfig(vocab_size=minilm_tokenizer().vocab_size, hidden_size=48,
                        num_hidden_layers=2, num_attention_heads=4, intermediate_size=96)
    torch.manual_seed(seed)
    return BertModel(config)


def tiny_bert(seed: int = 0, name: str = "tiny-bert") -> backbone.Backbone:
    """``tiny_bert_model`` with the MiniLM tokenizer, frozen and wrapped as a Backbone."""
    return backbone.wrap(tiny_bert_model(seed), minilm_tokenizer(), name)


def saved_tiny_bert(folder: str | Path, seed: int = 0) -> backbone.Backbone:
    """A tiny BERT saved to ``folder`` (model + tokenizer) and loaded back with
    ``backbone.load_backbone(folder)``, so its name is a loadable path (for the CLI)."""
    folder = Path(folder)
    tiny_bert_model(seed).save_pretrained(str(folder))
    minilm_tokenizer().save_pretrained(str(folder))
    return backbone.load_backbone(str(folder), device="cpu")


def tiny_expert(bb: backbone.Backbone, task: str, rank: int = 3, steps: int = 2,
                init: str = "kaiming", seed: int = 0, name: str | None = None,
                method: str = "tt-lora", shapes: dict | None = None,
                max_length: int = 32) -> experts.Expert:
    """An expert trained for a couple of steps on the shipped samples (kaiming: nonzero cores)."""
    config = experts.ExpertConfig(task=task, method=method, rank=rank, init=init, steps=steps,
                                  batch_size=4, max_length=max_length, seed=seed, device="cpu",
                                  train_limit=16, eval_limit=8, shapes=shapes)
    return experts.train_expert(config, bb, data_dir=SAMPLES, name=name or task)


def routing_sets(expert_list: Sequence[experts.Expert], per_task: int = 12,
                 eval_per_task: int = 6, seed: int = 0):
    """(train, held-out) RoutingData for the experts' tasks from the samples."""
    pairs = [(e.name, e.config.task) for e in expert_list]
    return (routing.routing_data(pairs, "train", per_task, SAMPLES, seed),
            routing.routing_data(pairs, "validation", eval_per_task, SAMPLES, seed))


def tiny_router(bb: backbone.Backbone, expert_list: Sequence[experts.Expert],
                variant: str = "mlp", layers: Sequence[int] = (1,), epochs: int = 3,
                per_task: int = 12, eval_per_task: int = 6, seed: int = 0) -> tuple:
    """(router, report, train data) of the best layer of a small ``sweep_layers`` run."""
    train, held = routing_sets(expert_list, per_task, eval_per_task, seed)
    config = routing.RouterConfig(variant=variant, hidden=16, epochs=epochs, batch_size=32,
                                  seed=seed, max_length=64)
    results = routing.sweep_layers(config, list(layers), bb, train, held)
    best = max(results, key=lambda r: r["report"].accuracy)
    return best["router"], best["report"], train


def tiny_pack(pack_dir: str | Path, bb: backbone.Backbone, tasks: Sequence[str] | None = None,
              expert_list: Sequence[experts.Expert] | None = None, variant: str = "mlp",
              layers: Sequence[int] = (1,), epochs: int = 3) -> tuple[Path, list, object]:
    """A pack folder with the given experts (or tiny ones trained for ``tasks``) and a router.

    Returns (pack path, experts, router)."""
    pack_dir = Path(pack_dir)
    if expert_list is None:
        expert_list = [tiny_expert(bb, task, rank=3 + i, seed=i) for i, task in enumerate(tasks)]
    for expert in expert_list:
        store.append_expert(pack_dir, expert)
    trained, report, train = tiny_router(bb, expert_list, variant=variant, layers=layers,
                                         epochs=epochs)
    store.save_router(pack_dir, trained, train.names, {"accuracy": report.accuracy}, bb.info)
    return pack_dir, list(expert_list), trained


def sample_rows(samples_dir: Path, task: str, train_rows: int, valid_rows: int):
    """(train rows, validation rows) of ``task`` from the shipped samples, the first of each."""
    return (tasks.load_task(task, "train", data_dir=samples_dir, limit=train_rows),
            tasks.load_task(task, "validation", data_dir=samples_dir, limit=valid_rows))


def tree_hashes(folder: str | Path) -> dict[str, str]:
    """sha256 of every file under ``folder`` by relative path."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def random_expert(template: experts.Expert, name: str, rank: int, num_labels: int = 2,
                  seed: int = 0, scale: float = 0.3) -> experts.Expert:
    """An expert with ``template``'s targets and TT factors but random cores of ``rank`` and a
    random head of ``num_labels`` labels (no training)."""
    import dataclasses

    from ttmoe_core import adapters, tt

    generator = torch.Generator().manual_seed(seed)
    tensors = {}
    for key in template.tensors:
        if ".cores." not in key:
            continue
        layer, k = key.rsplit(".cores.", 1)
        layout = adapters.layout_for(template.tt_layout, layer)
        shape = tt.core_shapes(layout["in_factors"], layout["out_factors"], rank)[int(k)]
        tensors[key] = scale * torch.randn(shape, generator=generator)
    hidden = template.tensors["head.weight"].shape[1]
    tensors["head.weight"] = torch.randn(num_labels, hidden, generator=generator)
    tensors["head.bias"] = torch.randn(num_labels, generator=generator)
    return dataclasses.replace(template, name=name,
                               config=dataclasses.replace(template.config, rank=rank),
                               label_names=[f"label{i}" for i in range(num_labels)],
                               tensors=tensors,      # no confusion: it was the template's labels'
                               metrics={k: v for k, v in template.metrics.items() if k != "confusion"})


# ----------------------------------------------------------------------------- decoders


@functools.lru_cache(maxsize=1)
def decoder_tokenizer():
    """A fast byte-level BPE tokenizer as LLaMA-family decoders have one: bos/eos/unk but NO pad
    token, ``<s> A`` and ``<s> A <s> B`` templates (as SmolLM2's), trained on the shipped samples
    (vocabulary ~600)."""
    import pandas as pd
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = []
    for path in sorted(SAMPLES.rglob("*.parquet")):
        frame = pd.read_parquet(path)
        for column in frame.columns:
            values = frame[column].dropna().tolist()
            texts += [v for v in values if isinstance(v, str)]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(
        vocab_size=600, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s>:1 $B:1", special_tokens=[("<s>", bos)])
    out = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                  unk_token="<unk>", model_input_names=["input_ids", "attention_mask"])
    assert out.pad_token is None
    return out


def tiny_decoder_model(kind: str = "llama", seed: int = 0, num_layers: int = 3, **overrides):
    """A randomly initialised llama / qwen2 / mistral decoder stack: hidden 48, ``num_layers``
    layers, 4 heads / 2 KV heads, intermediate 96, eager-free default attention, no pad id."""
    import transformers

    classes = {"llama": ("LlamaConfig", "LlamaModel"), "qwen2": ("Qwen2Config", "Qwen2Model"),
               "mistral": ("MistralConfig", "MistralModel")}
    config_cls, model_cls = (getattr(transformers, name) for name in classes[kind])
    tok = decoder_tokenizer()
    config = config_cls(hidden_size=48, num_hidden_layers=num_layers, num_attention_heads=4,
                        num_key_value_heads=2, intermediate_size=96, vocab_size=len(tok),
                        max_position_embeddings=256, bos_token_id=tok.bos_token_id,
                        eos_token_id=tok.eos_token_id, pad_token_id=None, **overrides)
    torch.manual_seed(seed)
    return model_cls(config)


def tiny_decoder(kind: str = "llama", seed: int = 0, num_layers: int = 3,
                 **overrides) -> backbone.Backbone:
    """``tiny_decoder_model`` with ``decoder_tokenizer`` (no pad token), wrapped as a Backbone."""
    return backbone.wrap(tiny_decoder_model(kind, seed, num_layers, **overrides),
                         decoder_tokenizer(), f"tiny-{kind}")
