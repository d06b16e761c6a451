"""Tokenization (backbone.encode_rows / tokenize / tokenize_mixed): the same ids as the
transformers tokenizer called row by row, one call per batch, and safe when threads share one
tokenizer (issue 10: 'Already borrowed')."""

from __future__ import annotations

import copy
import functools

import pytest
import torch

from tests.threads import run_together
from tests.tinymodels import SAMPLES, minilm_tokenizer
from ttmoe_core import tasks
from ttmoe_core.base import backbone
from ttmoe_core.base import partial as layers

MAX_LENGTH = 32


def mixed_rows() -> tuple[list[str], list[str | None]]:
    """Short sample rows (singles and pairs) and rows around and over MAX_LENGTH tokens: long
    singles, pairs with a long first / second / both texts, one row at the limit, one just over."""
    texts, pairs = [], []
    for task in ("sst2", "mnli", "rte"):
        data = tasks.load_task(task, "validation", data_dir=SAMPLES, limit=4, seed=0)
        texts += data.texts
        pairs += data.text_pairs if data.text_pairs else [None] * len(data)
    for words in (MAX_LENGTH - 3, MAX_LENGTH - 2, MAX_LENGTH - 1, MAX_LENGTH, 3 * MAX_LENGTH):
        texts.append(" ".join(["word"] * words))                       # [CLS] words [SEP]
        pairs.append(None)
    long_a = " ".join(f"premise{i % 7}" for i in range(MAX_LENGTH))
    long_b = " ".join(f"hypothesis{i % 5}" for i in range(2 * MAX_LENGTH))
    texts += [long_a, "a short premise", long_a, " ".join(["a"] * (MAX_LENGTH // 2 - 2))]
    pairs += ["a short hypothesis", long_b, long_b, " ".join(["b"] * (MAX_LENGTH // 2 - 1))]
    return texts, pairs


def reference(tokenizer, text: str, pair: str | None, max_length: int) -> tuple[list, list, bool]:
    """(ids, token types, truncated) from the transformers tokenizer, one row at a time."""
    full = tokenizer(text, pair)
    truncated = len(full["input_ids"]) > max_length
    cut = tokenizer(text, pair, truncation=True, max_length=max_length)
    return list(cut["input_ids"]), list(cut["token_type_ids"]), truncated


@pytest.fixture(scope="module")
def own_tokenizer():
    """A private copy: the reference calls change a fast tokenizer's settings."""
    return copy.deepcopy(minilm_tokenizer())


@pytest.fixture(scope="module")
def slow_tokenizer():
    from transformers import BertTokenizer

    return BertTokenizer.from_pretrained(str(backbone.default_model_path()), local_files_only=True)


@pytest.mark.parametrize("kind", ["fast", "slow"])
def test_encode_rows_equals_the_tokenizer_row_by_row(kind, own_tokenizer, slow_tokenizer):
    """Fast and slow tokenizers each against themselves (their longest-first rules differ)."""
    tokenizer = own_tokenizer if kind == "fast" else slow_tokenizer
    texts, pairs = mixed_rows()
    encoded = backbone.encode_rows(tokenizer, texts, pairs, MAX_LENGTH)
    assert len(encoded) == len(texts) and encoded.texts == tuple(texts)
    assert encoded.text_pairs == tuple(pairs)
    for i, (text, pair) in enumerate(zip(texts, pairs)):
        ids, types, truncated = reference(tokenizer, text, pair, MAX_LENGTH)
        assert list(encoded.input_ids[i]) == ids, i
        assert list(encoded.token_type_ids[i]) == types, i
        assert encoded.truncated[i] is truncated, i
        assert len(ids) <= MAX_LENGTH
    assert 3 <= sum(encoded.truncated) < len(texts)
    # the row at the limit is not truncated, the one just over is
    at_limit = texts.index(" ".join(["word"] * (MAX_LENGTH - 2)))
    assert encoded.lengths[at_limit] == MAX_LENGTH and not encoded.truncated[at_limit]
    assert encoded.truncated[at_limit + 1]


def test_tokenize_equals_the_padded_tokenizer_batch(own_tokenizer):
    texts, pairs = mixed_rows()
    singles = [t for t, p in zip(texts, pairs) if p is None]
    pair_rows = [(t, p) for t, p in zip(texts, pairs) if p is not None]
    for batch_texts, batch_pairs in ((singles, None), ([t for t, _ in pair_rows],
                                                       [p for _, p in pair_rows])):
        got = backbone.tokenize(own_tokenizer, batch_texts, batch_pairs, MAX_LENGTH, "cpu")
        want = own_tokenizer(batch_texts, batch_pairs, padding=True, truncation=True,
                             max_length=MAX_LENGTH, return_tensors="pt")
        assert list(got) == list(want)
        for key in want:
            assert torch.equal(got[key], want[key]), key


def test_batch_pads_right_and_take_keeps_the_given_order(own_tokenizer):
    texts, pairs = mixed_rows()
    encoded = backbone.encode_rows(own_tokenizer, texts, pairs, MAX_LENGTH)
    batch, truncated = backbone.tokenize_mixed(own_tokenizer, texts, pairs, MAX_LENGTH, "cpu")
    assert truncated == list(encoded.truncated)
    assert batch["input_ids"].shape == (len(texts), max(encoded.lengths))
    assert batch["attention_mask"].sum(1).tolist() == encoded.lengths
    rows = [5, 0, 5, len(texts) - 1]
    part = encoded.take(rows)
    assert part.texts == tuple(texts[r] for r in rows) and part.lengths == [encoded.lengths[r] for r in rows]
    sub = encoded.batch(rows)
    width = max(encoded.lengths[r] for r in rows)
    assert sub["input_ids"].shape == (len(rows), width)
    for b, r in enumerate(rows):
        n = encoded.lengths[r]
        assert torch.equal(sub["input_ids"][b, :n], batch["input_ids"][r, :n])
        assert torch.equal(sub["token_type_ids"][b], batch["token_type_ids"][r, :width])
        assert sub["input_ids"][b, n:].eq(own_tokenizer.pad_token_id).all()
        assert sub["attention_mask"][b].tolist() == [1] * n + [0] * (width - n)


def test_no_token_types_when_the_model_takes_none(own_tokenizer):
    tokenizer = copy.deepcopy(own_tokenizer)
    tokenizer.model_input_names = ["input_ids", "attention_mask"]
    batch = backbone.tokenize(tokenizer, ["one", "two words"], None, MAX_LENGTH, "cpu")
    assert list(batch) == ["input_ids", "attention_mask"]


def test_encoding_leaves_the_shared_tokenizer_settings_alone():
    tokenizer = copy.deepcopy(minilm_tokenizer())
    inner = tokenizer.backend_tokenizer
    before = (inner.truncation, inner.padding)
    texts, pairs = mixed_rows()
    for max_length in (8, MAX_LENGTH, 64):
        backbone.encode_rows(tokenizer, texts, pairs, max_length)
    assert (inner.truncation, inner.padding) == before


def test_sixteen_threads_share_one_tokenizer():
    """Concurrent encodings with different max lengths on one tokenizer, while its owner also
    calls it directly: every thread gets the sequential answer."""
    tokenizer = copy.deepcopy(minilm_tokenizer())
    texts, pairs = mixed_rows()
    jobs = [(texts[i % 5:], pairs[i % 5:], (16, MAX_LENGTH, 48)[i % 3]) for i in range(16)]
    expected = [backbone.encode_rows(tokenizer, t, p, m) for t, p, m in jobs]
    assert any(any(e.truncated) for e in expected)

    def work(slot: int):
        return [backbone.encode_rows(tokenizer, *jobs[slot]) for _ in range(20)][-1]

    def owner() -> None:   # the one thread that uses the transformers wrapper itself
        for i in range(40):
            tokenizer(texts, truncation=True, max_length=8 + i % 5,
                      padding="longest" if i % 2 else False)

    results = run_together([functools.partial(work, i) for i in range(len(jobs))] + [owner])
    assert results[:-1] == expected


# ----------------------------------------------------------------------------- layers one by one


def test_continue_layers_equals_the_full_pass_float64():
    """The state after layer k, continued through layers k..L-1, is the model's own last hidden
    state on every real token (padded and unpadded batches; k = 0, 1, 2)."""
    from tests.tinymodels import tiny_bert

    bb = tiny_bert(seed=0)
    model = copy.deepcopy(bb.model).double()
    texts, pairs = mixed_rows()
    for rows in (slice(0, 6), slice(3, 4)):
        batch = backbone.tokenize(bb.tokenizer, texts[rows], pairs[rows], MAX_LENGTH, "cpu")
        mask = batch["attention_mask"]
        with torch.no_grad():
            full = model(**batch).last_hidden_state
            for k in range(3):
                states = layers.hidden_states(model, batch, k)
                assert len(states) == k + 1
                got = layers.continue_layers(model, states[-1], mask, k)
                real = mask.bool()
                torch.testing.assert_close(got[real], full[real], rtol=0, atol=1e-10)
    assert layers.layer_mask(model, torch.ones(2, 5, dtype=torch.long), torch.float64) is None
    padded = layers.layer_mask(model, torch.tensor([[1, 1, 0]]), torch.float64)
    assert padded.shape == (1, 1, 1, 3) and padded[0, 0, 0, 2] < -1e30 and padded[0, 0, 0, 0] == 0


def test_weight_sharing_copy_shares_tensors_not_modules():
    from tests.tinymodels import tiny_bert

    bb = tiny_bert(seed=0)
    clone = backbone.weight_sharing_copy(bb.model)
    assert all(a is b for a, b in zip(clone.parameters(), bb.model.parameters()))
    assert all(a is b for a, b in zip(clone.buffers(), bb.model.buffers()))
    clone.encoder.layer[0].attention.self.query = torch.nn.Identity()
    assert isinstance(bb.model.encoder.layer[0].attention.self.query, torch.nn.Linear)
