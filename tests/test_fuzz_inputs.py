"""Property-based fuzzing of ``predict --input-file``: random JSONL files (random bytes, random JSON
values, missing and extra keys, huge strings and numbers, deep nesting, non-string text, lone
surrogates, odd line separators) on a tiny pack.

Every case ends with exit 0 (every line answered), 1 (some lines have an error of their own, the
others are answered, all in input order) or 2 (the file cannot be read: not UTF-8, or no lines),
with one ``error: `` line on stderr per failed line (or one for the file), never a traceback and
never an unforeseen error. The mixture is built once and handed to the CLI (its pack loading is
tested in test_cli.py), so each case costs one tokenization and one forward pass.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.tinymodels import tiny_bert, tiny_pack
from ttmoe_core import cli
from ttmoe_core.cli import mixture as cli_mixture
from ttmoe_core.moe import TTLoRAMoE

FUZZ = settings(max_examples=300, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def predict(tmp_path_factory):
    """``predict(file bytes) -> (exit code, stdout, stderr)`` through ``cli.main`` on a tiny pack."""
    pack = tiny_pack(tmp_path_factory.mktemp("fuzz") / "pack", tiny_bert(), ["sst2", "rte"],
                     epochs=2)[0]
    moe = TTLoRAMoE.from_pack(pack, backbone=tiny_bert())
    folder = Path(tempfile.mkdtemp(dir=tmp_path_factory.getbasetemp()))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(cli_mixture, "load_mixture", lambda path, device, dtype="float32", pool_dtype="float32", detector=True: moe)

        def run(content: bytes) -> tuple[int, str, str]:
            path = folder / "inputs.jsonl"
            path.write_bytes(content)
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = cli.main(["predict", "--json", "--pack", str(pack), "--input-file",
                                 str(path)])
            return code, out.getvalue(), err.getvalue()

        yield run


# ----------------------------------------------------------------------------- what a line may be

ANY_CHAR = st.characters(codec=None, exclude_categories=())        # surrogates included
TEXTS = st.one_of(
    st.text(max_size=40),
    st.text(ANY_CHAR, max_size=20),
    st.sampled_from(["", "   ", "\u2028", "a\u2028b", "x\x85y", "\ufeff", "\x00", "é" * 3,
                     "\ud800", "ok \udfff"]),
    st.integers(1, 20_000).map(lambda n: "word " * n),               # far past max_length
)
JSON_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), TEXTS)
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
    max_leaves=8)


@st.composite
def objects(draw) -> dict:
    """An input object: text and text_pair present or not, of any type, and extra keys."""
    obj = draw(st.dictionaries(st.text(max_size=10), JSON_VALUES, max_size=3))
    if draw(st.booleans()):
        obj["text"] = draw(st.one_of(TEXTS, JSON_VALUES))
    if draw(st.booleans()):
        obj["text_pair"] = draw(st.one_of(st.none(), TEXTS, JSON_VALUES))
    return obj


def _dumps(value, ascii_only: bool) -> bytes:
    return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")


LINES = st.one_of(
    st.builds(_dumps, objects(), st.booleans()),
    st.builds(_dumps, JSON_VALUES, st.booleans()),
    st.binary(max_size=30),                                            # random bytes
    st.integers(1, 30_000).map(lambda n: b"[" * n + b"]" * n),        # deep nesting
    st.integers(4_000, 20_000).map(lambda n: b'{"text": "x", "n": ' + b"7" * n + b"}"),
    st.sampled_from([b"", b"   ", b"\r", b"NaN", b'{"text": NaN}', b'{"text": "a"}\r',
                     b'\xef\xbb\xbf{"text": "bom"}', b"{", b'{"text": "a"} trailing']),
)


# ----------------------------------------------------------------------------- the oracle


def expected_line(line: str) -> bool:
    """Whether a non-blank line should be answered (the rule of ``predict --input-file``)."""
    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return False
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str) or not obj["text"].strip():
        return False
    pair = obj.get("text_pair")
    if pair is not None and not isinstance(pair, str):
        return False
    return all(_encodable(v or "") for v in (obj["text"], pair))


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def check(content: bytes, code: int, out: str, err: str) -> None:
    assert "Traceback" not in err and "unexpected" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    try:
        lines = content.decode("utf-8-sig").split("\n")
    except UnicodeDecodeError:
        lines = None
    numbered = [(n, line) for n, line in enumerate(lines or [], 1) if line.strip()]
    if lines is None or not numbered:
        assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and len(errors) == 1
        return
    records = [json.loads(line) for line in out.splitlines()]
    assert len(records) == len(numbered), "one answer per non-blank line, in input order"
    failed = 0
    for (number, line), record in zip(numbered, records):
        if expected_line(line):
            obj = json.loads(line)
            assert "error" not in record, (line[:200], record)
            # a text longer than the character cap is answered cut, and says so
            assert obj["text"].startswith(record["text"]) and record["expert"] in ("sst2", "rte")
            assert record["text"] == obj["text"] or record["truncated"]
            assert record["label"] is not None
        else:
            failed += 1
            assert record["line"] == number and record["error"].startswith(f"line {number}")
            assert "\n" not in record["error"]
    assert code == (1 if failed else 0) and len(errors) == failed, err


# ----------------------------------------------------------------------------- the properties


@FUZZ
@given(st.lists(LINES, min_size=0, max_size=6))
@example([b'{"text": "a\xe2\x80\xa8b"}'])                 # U+2028 inside a string is not a line break
@example([b'{"text": "x\xc2\x85y", "text_pair": "z"}'])   # nor is U+0085
@example([b'{"text": "\\ud800"}', b'{"text": "fine"}'])   # a lone surrogate: that line only
@example([b'{"text": "ok", "text_pair": 5}'])            # a non-string text_pair is an error
@example([b'{"text": "x", "n": ' + b"7" * 4301 + b"}"])    # int too long for Python's parser
@example([b"[" * 1987 + b"]" * 1987])                      # nesting deeper than the recursion limit
@example([b'\xef\xbb\xbf{"text": "a file saved with a BOM"}'])
@example([b'{"text": NaN}', b'{"text": "' + b"word " * 20_000 + b'"}'])
@example([b"\x1c", b"\x85"])                             # blank to str.strip: no lines, exit 2
def test_predict_input_file_never_crashes(predict, lines):
    content = b"\n".join(lines)
    code, out, err = predict(content)
    check(content, code, out, err)


@FUZZ
@given(st.binary(max_size=200))
@example(b"\xff\xfe{}")
@example(b"\x00\x0b\x00")                   # \x0b split lines (str.splitlines): numbers were off
@example(b'{"text": "a"}\n\xff')
def test_predict_input_file_of_random_bytes(predict, content):
    code, out, err = predict(content)
    check(content, code, out, err)
