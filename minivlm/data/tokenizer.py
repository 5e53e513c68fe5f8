"""Character- and word-level tokenizers with special and task-marker tokens.

Word level splits on spaces and punctuation (each punctuation mark is a token);
decoding rejoins words with single spaces, with no space before closing
punctuation nor around CJK punctuation, so decode(encode(t)) == t for text with
that spacing. Character level keeps every character, spaces included, and round
trips exactly: it is the right choice for Chinese.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<bos>", "<eos>"
CAPTION, QUESTION, ANSWER = "<caption>", "<question>", "<answer>"
SPECIAL_TOKENS: tuple[str, ...] = (PAD, UNK, BOS, EOS, CAPTION, QUESTION, ANSWER)  # ids 0..6
KINDS: tuple[str, ...] = ("word", "char")
FORMAT = "minivlm-tokenizer"

WORD_PATTERN = re.compile(r"\w+(?:'\w+)*|[^\w\s]")
_CJK_PUNCTUATION = set("，。、；：？！“”‘’（）《》【】…")
_NO_SPACE_BEFORE = set(",.;:?!%)]}") | _CJK_PUNCTUATION
_NO_SPACE_AFTER = set("([{") | _CJK_PUNCTUATION


class Tokenizer:
    """A fixed vocabulary: `tokens[i]` is the token of id i; the special tokens come first."""

    def __init__(self, tokens: Sequence[str], kind: str = "word") -> None:
        if kind not in KINDS:
            raise ValueError(f"Tokenizer kind: expected one of {KINDS}, got {kind!r}")
        tokens = list(tokens)
        if tuple(tokens[: len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
            raise ValueError(
                f"Tokenizer tokens: expected to start with {SPECIAL_TOKENS}, "
                f"got {tokens[: len(SPECIAL_TOKENS)]}"
            )
        if not all(isinstance(token, str) and token for token in tokens):
            raise ValueError("Tokenizer tokens: expected non-empty strings")
        self.kind = kind
        self.tokens = tokens
        self.ids = {token: index for index, token in enumerate(tokens)}
        if len(self.ids) != len(tokens):
            repeated = sorted({t for t in tokens if tokens.count(t) > 1})
            raise ValueError(f"Tokenizer tokens: each token once, got repeats {repeated}")
        # the special tokens sit at ids 0..6, in SPECIAL_TOKENS order
        self.pad_id, self.unk_id, self.bos_id, self.eos_id = 0, 1, 2, 3
        self.caption_id, self.question_id, self.answer_id = 4, 5, 6

    @classmethod
    def build(cls, texts: Iterable[str], kind: str = "word") -> Tokenizer:
        """The special tokens, then every word (or character) of the texts, sorted."""
        if kind not in KINDS:
            raise ValueError(f"Tokenizer.build kind: expected one of {KINDS}, got {kind!r}")
        seen: set[str] = set()
        for index, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"Tokenizer.build texts[{index}]: expected str, got {text!r}")
            seen.update(_split(text, kind))
        return cls([*SPECIAL_TOKENS, *sorted(seen - set(SPECIAL_TOKENS))], kind)

    @property
    def vocab_size(self) -> int:
        return len(self.tokens)

    def encode(self, text: str) -> list[int]:
        """Token ids of the text; unknown words or characters become <unk>."""
        return self.encode_with_offsets(text)[0]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids and each token's [start, end) character range in the text."""
        if not isinstance(text, str):
            raise TypeError(f"encode text: expected str, got {type(text).__name__}")
        if self.kind == "char":
            offsets = [(i, i + 1) for i in range(len(text))]
        else:
            offsets = [match.span() for match in WORD_PATTERN.finditer(text)]
        unk = self.unk_id
        ids = [self.ids.get(text[start:end], unk) for start, end in offsets]
        return ids, offsets

    def decode(self, ids: Iterable[int], skip_special: bool = True) -> str:
        """Text of the ids. skip_special drops pad, bos, eos and task markers (not <unk>)."""
        pieces = []
        for position, index in enumerate(ids):
            index = int(index)
            if not 0 <= index < len(self.tokens):
                raise ValueError(
                    f"decode ids[{position}]: expected an id in [0, {len(self.tokens)}), "
                    f"got {index}"
                )
            token = self.tokens[index]
            if skip_special and token in SPECIAL_TOKENS and token != UNK:
                continue
            pieces.append(token)
        return "".join(pieces) if self.kind == "char" else _join_words(pieces)

    def caption_sequence(self, caption: str) -> tuple[list[int], int]:
        """<bos> <caption> caption <eos>, and the index of the first trained token
        (the one after <caption>)."""
        ids = [self.bos_id, self.caption_id, *self.encode(caption), self.eos_id]
        return ids, 2

    def qa_sequence(self, question: str, answer: str) -> tuple[list[int], int]:
        """<bos> <question> question <answer> answer <eos>, and the index of the first
        trained token (the one after <answer>)."""
        prompt = [self.bos_id, self.question_id, *self.encode(question), self.answer_id]
        return [*prompt, *self.encode(answer), self.eos_id], len(prompt)

    def described_qa_sequence(
        self, description: str, asked: Sequence[tuple[str, str]]
    ) -> tuple[list[int], int, tuple[tuple[int, int], ...]]:
        """<bos> <caption> description, then for each (question, answer) in turn
        <question> question <answer> answer <eos>: the scene described first, then asked
        about. Returns the ids, the first trained index (the description's first token)
        and the untrained spans [start, stop), one `<question> question <answer>` each;
        the answers and their <eos> are trained."""
        if len(asked) == 0:
            raise ValueError(
                "described_qa_sequence asked: expected at least one (question, answer)"
            )
        ids = [self.bos_id, self.caption_id, *self.encode(description)]
        untrained = []
        for question, answer in asked:
            start = len(ids)
            ids += [self.question_id, *self.encode(question), self.answer_id]
            untrained.append((start, len(ids)))
            ids += [*self.encode(answer), self.eos_id]
        return ids, 2, tuple(untrained)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "kind": self.kind, "tokens": list(self.tokens)}

    @classmethod
    def from_dict(cls, data: dict) -> Tokenizer:
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"Tokenizer.from_dict: expected a dict with format {FORMAT!r}")
        if not isinstance(data.get("tokens"), list):
            raise ValueError("Tokenizer.from_dict: expected 'tokens' to be a list of strings")
        return cls(data["tokens"], data.get("kind"))

    def save(self, path: str | os.PathLike) -> None:
        """Write JSON atomically: a temporary file beside `path`, then os.replace."""
        path = Path(path)
        handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(handle, "w", encoding="utf-8") as file:
                json.dump(self.to_dict(), file, ensure_ascii=False, indent=1)
            os.replace(temp_name, path)
        except BaseException:
            os.unlink(temp_name)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike) -> Tokenizer:
        with open(path, encoding="utf-8") as file:
            return cls.from_dict(json.load(file))

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, Tokenizer) and self.kind == other.kind and self.tokens == other.tokens
        )

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"


def _split(text: str, kind: str) -> list[str]:
    return list(text) if kind == "char" else WORD_PATTERN.findall(text)


def _join_words(words: list[str]) -> str:
    """Words with single spaces, none before closing or after opening punctuation."""
    text = ""
    for word in words:
        glued = not text or word in _NO_SPACE_BEFORE or text[-1] in _NO_SPACE_AFTER
        text += word if glued else " " + word
    return text
