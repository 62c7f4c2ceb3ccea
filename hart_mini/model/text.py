"""Captions -> token ids -> text features: the course's stand-in for HART's Qwen2 text encoder.

HART encodes a prompt with a 1.5B-parameter language model and feeds the token features to the
transformer as a prefix. ToyShapes captions come from a small grammar, so a word-level tokenizer and a
tiny transformer encoder, trained together with the generator, do the same job here.

    CaptionTokenizer(["a", "red", ...])("a red circle")  ->  ids (B, T), mask (B, T)
    TextEncoder(...)(ids, mask)                          ->  features (B, T, D)

Captions are **left-padded** to T tokens, so the last position always holds the last word; the
transformer reads the 1x1 scale from that position (HART: the last context token predicts scale 1).
"""

from __future__ import annotations

import difflib
import re

import numpy as np
import torch
import torch.nn as nn

from hart_mini.config import require
from hart_mini.model.blocks import Block  # the generator's block; here without AdaLN
from hart_mini.model.data import COLOUR_NAMES, POSITIONS, RELATIONS, SHAPES, SIZES, TEXTURES

PAD = "<pad>"


def toyshapes_words() -> list[str]:
    """Every word a ToyShapes caption can use (the grammar in hart_mini.model.data)."""
    words = ["a", "at", "the", *SIZES, *COLOUR_NAMES, *TEXTURES, *SHAPES]
    for phrase in (*POSITIONS, *RELATIONS):
        words += phrase.split()
    return list(dict.fromkeys(words))  # unique, in a stable order


def normalise(caption: str) -> str:
    """Lower case, single spaces, no trailing full stop."""
    return re.sub(r"\s+", " ", caption.strip().lower()).rstrip(".").strip()


class CaptionTokenizer:
    """Word-level tokenizer with a closed vocabulary; in 'labels' mode a whole caption is one token.

    An unknown word is an error that names it and the nearest known words: a silent unknown-token would
    let the model draw something unrelated to a typo'd prompt.
    """

    def __init__(self, words: list[str], max_len: int = 16, mode: str = "words"):
        require(mode in ("words", "labels"), "mode", mode, "'words' or 'labels'")
        require(isinstance(max_len, int) and max_len >= 1, "max_len", max_len, "an integer >= 1")
        require(len(words) >= 1 and len(set(words)) == len(words), "words", words, "a non-empty list without repeats")
        self.mode, self.max_len = mode, 1 if mode == "labels" else max_len
        self.vocab = [PAD, *words]
        self.index = {w: i for i, w in enumerate(self.vocab)}

    @classmethod
    def toyshapes(cls, max_len: int = 16) -> CaptionTokenizer:
        return cls(toyshapes_words(), max_len)

    @classmethod
    def from_captions(cls, captions: list[str], mode: str = "words", max_len: int = 16) -> CaptionTokenizer:
        """Vocabulary from a list of captions (e.g. an ImageFolder's folder names)."""
        if mode == "labels":
            units = [normalise(c) for c in captions]
        else:
            units = [w for c in captions for w in normalise(c).split()]
        return cls(list(dict.fromkeys(units)), max_len, mode)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    def to_dict(self) -> dict:
        return {"words": self.vocab[1:], "max_len": self.max_len, "mode": self.mode}

    @property
    def article_id(self) -> int | None:
        """The id of "a", which starts each noun phrase of a ToyShapes caption (TextEncoder's segments)."""
        return self.index.get("a")

    @classmethod
    def from_dict(cls, d: dict) -> CaptionTokenizer:
        return cls(d["words"], d["max_len"], d["mode"])

    def _unknown(self, unit: str, caption: str) -> ValueError:
        close = difflib.get_close_matches(unit, self.vocab[1:], n=3, cutoff=0.5)
        hint = f"; did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        what = "caption" if self.mode == "labels" else "word"
        return ValueError(f"unknown {what} {unit!r} in prompt {caption!r}{hint} "
                          f"(known {what}s: {', '.join(self.vocab[1:])})")

    def encode(self, caption: str) -> list[int]:
        """One caption -> its token ids (no padding)."""
        if not isinstance(caption, str):
            raise ValueError(f"a prompt must be a string, got {type(caption).__name__}")
        text = normalise(caption)
        if not text:
            raise ValueError("the prompt is empty; describe an image, e.g. 'a large red striped circle at the top'")
        units = [text] if self.mode == "labels" else text.split()
        for unit in units:
            if unit not in self.index:
                raise self._unknown(unit, caption)
        if len(units) > self.max_len:
            raise ValueError(f"the prompt {caption!r} has {len(units)} words; at most {self.max_len} fit")
        return [self.index[u] for u in units]

    def __call__(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> ids (B, T) left-padded with 0, and mask (B, T), True on real tokens."""
        if isinstance(captions, str):
            captions = [captions]
        ids = np.zeros((len(captions), self.max_len), dtype=np.int64)  # filled in NumPy: no torch op per caption
        for b, caption in enumerate(captions):
            tokens = self.encode(caption)
            ids[b, self.max_len - len(tokens):] = tokens
        ids = torch.from_numpy(ids)
        return ids, ids != 0

    def decode(self, ids: torch.Tensor) -> str:
        return " ".join(self.vocab[i] for i in ids.tolist() if i != 0)


class TextEncoder(nn.Module):
    """Token + position embeddings, then a few bidirectional transformer blocks: (B, T) -> (B, T, D).

    How it tells word order (`position`, TransformerConfig.text_position):
      learned   x_t = e(w_t) + p_t, p_t for padded slot t, initialised at std 0.02: 25x smaller than the word
                vectors (std 1), and a word's slot moves with the caption's length (left padding). The
                gpu models and the cpu ones before 2026-12-05 use it; `diagnose text` shows they do not read
                word order.
      counted   p indexed by the word's place counted from the caption's first word, at std 1
      segments  counted, plus s_j for the noun phrase j the word is in: phrase j starts at the j-th article
                ("a"), so the colour of the first object and of the second get different inputs
      phrases   counted, plus the mean of the word vectors of the noun phrase the word is in (no parameters):
                "red" also carries "square" when the red object is the square, so a single attention step from
                an image token that drew red finds its shape. Encoder blocks can do this binding too, but
                they mute the relation word (notebook 09, section 7); this needs no blocks.
    """

    def __init__(self, vocab_size: int, max_len: int, width: int, depth: int, num_heads: int,
                 position: str = "learned", article_id: int | None = None, segments: int = 3):
        super().__init__()
        require(position not in ("segments", "phrases") or article_id is not None, "article_id", article_id,
                f"the id of the article that starts a noun phrase, for position={position!r}")
        self.position, self.article_id = position, article_id
        self.embed = nn.Embedding(vocab_size, width)  # std 1
        self.pos = nn.Parameter(torch.randn(max_len, width) * (0.02 if position == "learned" else 1.0))
        self.segment = nn.Embedding(segments, width) if position == "segments" else None
        self.blocks = nn.ModuleList(Block(width, num_heads, adaln=False) for _ in range(depth))
        self.norm = nn.LayerNorm(width)

    def phrase(self, ids: torch.Tensor) -> torch.Tensor:
        """The noun phrase each word is in, (B, T): 0 before any article, then 1, 2, ... (a phrase starts at
        each article, so "a small red circle left of" is phrase 1, "a large blue square" phrase 2)."""
        return torch.cumsum(ids == self.article_id, 1)

    def positions(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """What the text encoder adds to each word vector to tell where it is: (B, T, D)."""
        T = ids.shape[1]
        if self.position == "learned":
            return self.pos[:T].expand(len(ids), -1, -1)
        first = (~mask).sum(1, keepdim=True)  # (B, 1): padding slots before the first word
        place = (torch.arange(T, device=ids.device)[None] - first).clamp_min(0)  # (B, T): 0 at the first word
        out = self.pos[place]
        if self.segment is not None:  # capped at the last segment vector
            out = out + self.segment(self.phrase(ids).clamp_max(self.segment.num_embeddings - 1))
        return out

    def phrase_means(self, words: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """For each word, the mean of the word vectors (B, T, D) of its noun phrase (`phrase`): (B, T, D).
        Padding belongs to none."""
        phrase = self.phrase(ids)  # (B, T)
        same = (phrase[:, :, None] == phrase[:, None, :]) & mask[:, None, :]  # (B, T, T): j in i's phrase
        weights = same.float() / same.sum(-1, keepdim=True).clamp_min(1)
        return weights @ words  # (B, T, T) @ (B, T, D)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        words = self.embed(ids)  # (B, T, D)
        x = words + self.positions(ids, mask)
        if self.position == "phrases":
            x = x + self.phrase_means(words, ids, mask)
        attend = mask[:, None, None, :]  # (B, 1, 1, T): every token sees every real token
        for block in self.blocks:
            x = block(x, attend)
        return self.norm(x)


def text_condition(encoder: TextEncoder, project: nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                   drop: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Caption tokens -> (prefix x (B, T, D), valid (B, T), pooled (B, D)), for every generator.

    Dropped captions become the unconditional input: zero features, only the *last* position valid (our
    captions are left-padded, and the last position predicts scale 1), a zero pooled vector. `valid` enters
    attention, so no query ever attends to padding.

    HART differs: its unconditional branch is an all-zero context with only the *first* mask position
    valid, and its mask never enters attention (it only pools the context for AdaLN and numbers the RoPE
    positions), so every query attends to every context position, padding included
    (`autoregressive_infer_cfg` in hart_transformer_t2i.py, github.com/mit-han-lab/hart).
    """
    feats = encoder(ids, mask)  # (B, T, D)
    pooled = (feats * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1)  # (B, D)
    keep = ~drop[:, None]
    last_only = torch.zeros_like(mask)
    last_only[:, -1] = True
    valid = torch.where(keep, mask, last_only)
    return project(feats * keep[..., None]), valid, pooled * keep
