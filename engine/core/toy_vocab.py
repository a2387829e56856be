"""The toy models' vocabularies: every word of the shapes grammar is one token, any other text still encodes.

The toy models (engine/toy.py) learn from captions of a small grammar (engine/core/shapes.py). Their frozen
random text encoders tell captions apart more easily when each grammar word is one token with one
embedding than when words are spelled out in characters, so both tokenizers get whole-word pieces, on top
of a character fallback that keeps every other prompt encodable (into pieces the model never saw):

- CLIP (byte-level BPE): the 256 byte-level characters, alone and with CLIP's end-of-word suffix `</w>`,
  plus merges that build each grammar word. The merges are learned from the grammar's words the way BPE
  is trained (merge the most frequent adjacent pair, ties by the pair itself, until every word is one
  piece), so applying them in rank order rebuilds each word whole; hand-written per-word merge chains
  do not (the merge `r e` of "red" would split "green" as `g re e n`).
- T5 (Unigram, the model T5TokenizerFast is built around; a WordLevel model does not survive save/load):
  each word as a word-initial piece `▁word` scored above any split of it, plus the character pieces of
  the tiny models' tokenizer.

Torch-free and tokenizer-free (plain lists), so the memory estimator can count the toy text encoders'
embeddings without building them; engine/toy.py turns these lists into transformers tokenizers.
"""

from __future__ import annotations

import string
from collections import Counter
from collections.abc import Iterable
from itertools import pairwise

from dit_explore.engine.core.shapes import WORDS

GRAMMAR_WORDS: tuple[str, ...] = tuple(sorted(WORDS))
END_OF_WORD = "</w>"
CLIP_SPECIALS = ("<|startoftext|>", "<|endoftext|>")
T5_SPECIALS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2, as in real T5
_WORD_SCORE = -1.0  # above any split: every other piece scores -2 or less


def byte_level_alphabet() -> list[str]:
    """The 256 characters byte-level BPE maps bytes to (GPT-2's bytes_to_unicode), sorted."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    chars, extra = [chr(b) for b in printable], 0
    for b in range(256):
        if b not in printable:
            chars.append(chr(256 + extra))
            extra += 1
    return sorted(chars)


def bpe_merges(words: Iterable[str]) -> list[tuple[str, str]]:
    """Merges that turn each word (characters, the last with `</w>`) into one piece, learned as BPE is:
    repeatedly merge the most frequent adjacent pair (ties: the smallest pair), until no word has two pieces."""
    pieces = {w: [*w[:-1], w[-1] + END_OF_WORD] for w in dict.fromkeys(words) if w}
    merges: list[tuple[str, str]] = []
    while True:
        counts = Counter(pair for seq in pieces.values() for pair in pairwise(seq))
        if not counts:
            return merges
        best = min(counts, key=lambda pair: (-counts[pair], pair))
        merges.append(best)
        for word, seq in pieces.items():
            merged: list[str] = []
            i = 0
            while i < len(seq):
                if i + 1 < len(seq) and (seq[i], seq[i + 1]) == best:
                    merged.append(seq[i] + seq[i + 1])
                    i += 2
                else:
                    merged.append(seq[i])
                    i += 1
            pieces[word] = merged


def clip_vocabulary(words: Iterable[str] = GRAMMAR_WORDS) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's vocabulary (token -> id) and merges: characters, characters + `</w>`, every merge's result,
    then the two special tokens (last, so the start and end ids are len - 2 and len - 1)."""
    merges = bpe_merges(words)
    chars = byte_level_alphabet()
    tokens = list(dict.fromkeys(chars + [c + END_OF_WORD for c in chars] + [a + b for a, b in merges]))
    tokens += CLIP_SPECIALS
    return {token: index for index, token in enumerate(tokens)}, merges


def t5_pieces(words: Iterable[str] = GRAMMAR_WORDS) -> list[tuple[str, float]]:
    """The Unigram pieces and scores of the toy T5 tokenizer: specials, the word boundary, characters,
    word-initial letters (as the tiny models' tokenizer has them), then one piece per grammar word."""
    pieces: list[tuple[str, float]] = [(s, 0.0) for s in T5_SPECIALS] + [("▁", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_letters + string.digits + string.punctuation]
    pieces += [("▁" + c, -2.5) for c in string.ascii_lowercase]
    known = {piece for piece, _ in pieces}
    pieces += [("▁" + w, _WORD_SCORE) for w in dict.fromkeys(words) if "▁" + w not in known]
    return pieces


def vocab_size(tokenizer: str) -> int:
    """The number of tokens of the toy tokenizer of this kind ("clip" or "t5"): the text encoders'
    embedding rows."""
    if tokenizer == "clip":
        return len(clip_vocabulary()[0])
    if tokenizer == "t5":
        return len(t5_pieces())
    raise ValueError(f"unknown tokenizer kind {tokenizer!r}: 'clip' or 't5'")
