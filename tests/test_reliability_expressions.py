"""Reliability of referring expressions: empty, noisy, non-ASCII and overlong texts through the processing and the
predict command, and property tests of cleaning and tokenizing any text.

Usage: ``pytest tests/test_reliability_expressions.py``; with ``S2RM_RELIABILITY_LOG=<file>`` each case appends its row
to that file (tests/reliability_log.py).
"""

from __future__ import annotations

import unicodedata

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from foundation.errors import DataError
from runtimes.tokenizer import TextTokenizer, clean_expression
from tests.reliability_inputs import FAST, SIZE, TOKENS, encoded, predict, write_file
from tests.reliability_log import record, refused

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")


# -------------------------------------------------------------------------------------------------- expressions


@pytest.fixture(scope="module")
def proc():
    from runtimes.processing import Processing

    return Processing(img_size=SIZE, max_tokens=TOKENS)


@pytest.mark.parametrize(
    "text",
    ["", "   \t\n  ", "\x00\x1b\u200b\ufeff", None],
    ids=["empty", "whitespace only", "control and zero-width only", "not a string"],
)
def test_empty_expressions_are_refused(text, proc):
    words = "must be a string" if text is None else "is empty once whitespace and control characters are removed"
    refused("expression", repr(text), DataError, lambda: proc.text(text), words)


def test_control_characters_and_extra_whitespace_are_stripped(proc):
    plain = proc.text("the red star")["input_ids"]
    for noisy in ("the\x00 red\x07 star\u200b", "  the   red\t\nstar \x1b", "\ufeffthe red star\u2028"):
        assert np.array_equal(proc.text(noisy)["input_ids"], plain), repr(noisy)
        assert clean_expression(noisy) == "the red star"
    record(
        "expression",
        "'the\\x00 red\\x07 star\\u200b' (control / zero-width characters)",
        "same tokens as 'the red star'",
    )


NON_ASCII = {
    "accents": "la étoile rouge à gauche du cœur",
    "emoji in a sentence": "🙂 the red star ⭐",
    "emoji only": "🙂🙂🙂",
    "CJK": "左边的红色星星",
    "one 10000-letter word": "x" * 10_000,
}


@pytest.mark.parametrize("name", list(NON_ASCII))
def test_non_ascii_and_emoji_are_tokenized(name, proc):
    out, note = proc.text_with_note(NON_ASCII[name])
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape == (1, TOKENS) and mask[0, 0] == 1 and mask[0, :3].all()
    assert note is None or "truncated" in note
    tried = NON_ASCII[name] if len(NON_ASCII[name]) < 40 else name
    record("expression", tried, f"{int(mask.sum())} tokens" + (" (cut to the token length; noted)" if note else ""))


def test_long_expression_is_truncated_and_reported(proc, toy, tmp_path, capsys):
    words = ["the", "small", "green", "triangle", "left", "of", "the", "blue", "star"]
    text = " ".join((words * 60)[:500])
    out, note = proc.text_with_note(text)
    assert out["attention_mask"].all() and proc.tokenizer.last_truncated == [True]
    assert note is not None and f"{TOKENS} tokens" in note
    image = write_file(tmp_path / "frame.png", encoded(Image.new("RGB", (40, 30), (200, 10, 10)), "PNG"))
    code, err = predict(
        capsys, "--artifact", str(toy["onnx"]), "--image", str(image), "--text", text, "--out", str(tmp_path / "p")
    )
    assert code == 0 and "note: expression 'the small green" in err and "truncated" in err
    record("expression", "500 words", f"tokenized to {TOKENS} tokens; predict prints: {err.strip().splitlines()[0]}")


def test_predict_refuses_an_empty_text_before_writing_anything(toy, tmp_path, capsys):
    image = write_file(tmp_path / "frame.png", encoded(Image.new("RGB", (40, 30)), "PNG"))
    out = tmp_path / "p"
    args = [
        "--artifact",
        str(toy["onnx"]),
        "--image",
        str(image),
        "--text",
        "the star",
        "--text",
        " \t",
        "--out",
        str(out),
    ]
    code, err = predict(capsys, *args)
    assert code == 2 and "is empty" in err and not out.exists()
    record("predict CLI", "--text 'the star' --text ' \\t'", f"exit 2 before any output, {err.strip()}")


# ----------------------------------------------------------------------------------------------- property tests


def _visible(text: str) -> bool:
    return any(not unicodedata.category(c).startswith("C") and not c.isspace() for c in text)


@FAST
@given(text=st.text(max_size=200))
def test_clean_expression_properties(text):
    if not _visible(text):
        with pytest.raises(DataError, match="is empty"):
            clean_expression(text)
        return
    out = clean_expression(text)
    assert out == out.strip() and "  " not in out and out == clean_expression(out)
    assert not any(unicodedata.category(c).startswith("C") for c in out)
    assert [c for c in out if _visible(c)] == [c for c in text if _visible(c)]  # nothing visible lost or added


@pytest.fixture(scope="module")
def minilm() -> TextTokenizer:
    return TextTokenizer.from_dir(None, max_length=TOKENS)


@FAST
@given(text=st.text(max_size=300))
def test_tokenizer_any_text(minilm, text):
    if not _visible(text):
        with pytest.raises(DataError):
            minilm(text)
        return
    out = minilm(text)
    ids, mask = out["input_ids"][0], out["attention_mask"][0]
    n = int(mask.sum())
    assert ids.shape == mask.shape == (TOKENS,) and ids.dtype == np.int64
    assert 2 <= n <= TOKENS and mask[:n].all() and not mask[n:].any()  # real tokens first, then padding
    assert (ids[n:] == minilm.pad_id).all() and ids[0] == 101 and ids[n - 1] == 102  # [CLS] ... [SEP]
    assert minilm.last_truncated == [minilm.last_truncated[0]]
