"""fastText-style text classifier: word + hashed word-bigram embeddings, masked mean, softmax.

The text → ids step (`TextEncoder`) is a pure function shared by training and serving, and
the Keras model is rebuilt by code from a small config, so an artifact is just a vocabulary
json and float16 weights (no pickled Keras objects to keep compatible across versions).
"""
from __future__ import annotations

import json
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import keras
import numpy as np

from models.text import tokenize

PAD = 0


@dataclass(frozen=True)
class TextEncoder:
    """Words → ids 1..V, word bigrams → V+1+crc32(bigram) % n_buckets, 0 pads.

    Out-of-vocabulary words are dropped as words: a word never seen in training has no
    learned meaning. Bigrams are always hashed (fastText's trick); buckets no training
    bigram reached keep their zero initialization and so only dilute the mean. With
    ``char_ngrams`` = (lo, hi), every word of ≥ 4 letters also adds its hashed character
    n-grams of "<word>" (fastText subwords, same buckets), so plurals, misspellings and
    words seen only in marketplace text ("tringular", "skirts") share features with the
    catalogue words they resemble.
    """

    vocab: dict[str, int]
    n_buckets: int = 2**16
    max_len: int = 128  # tokens of a text that are used; long HTML descriptions are cut
    char_ngrams: tuple[int, int] | None = None
    normalizer: str = "v1"  # models.text.NORMALIZERS key: how this encoder's model was trained to read

    @property
    def n_ids(self) -> int:
        return 1 + len(self.vocab) + self.n_buckets

    @classmethod
    def build(cls, texts: Iterable[str], max_vocab: int = 30_000, min_count: int = 1, **kw) -> "TextEncoder":
        """Vocabulary of the most frequent words (ties broken alphabetically: deterministic)."""
        counts: dict[str, int] = {}
        normalizer = kw.get("normalizer", "v1")
        for t in texts:
            for w in tokenize(t, normalizer):
                counts[w] = counts.get(w, 0) + 1
        words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        return cls({w: i + 1 for i, w in enumerate(words[:max_vocab])}, **kw)

    def tokens(self, text: str | None) -> list[str]:
        """The words this encoder reads: the artifact's own normalizer, cut at ``max_len``."""
        return tokenize(text, self.normalizer)[: self.max_len]

    # The most ids one text gives. `max_len` bounds the words, not their length: one 20,000-letter "word"
    # gave 60,000 subword ids and padded its whole batch to that width (0.74 s and +570 MB for 32 events).
    # The longest catalogue description gives 2,136, so no training row is cut.
    MAX_IDS = 4096

    def ids(self, text: str) -> list[int]:
        toks = self.tokens(text)
        base = 1 + len(self.vocab)
        words = [self.vocab[w] for w in toks if w in self.vocab]
        bigrams = [base + zlib.crc32(f"{a} {b}".encode()) % self.n_buckets for a, b in zip(toks, toks[1:])]
        out = words + bigrams
        return out + self._subwords(toks, base, self.MAX_IDS - len(out))

    def _subwords(self, toks: list[str], base: int, limit: int) -> list[int]:
        if not self.char_ngrams:
            return []
        lo, hi = self.char_ngrams
        out: list[int] = []
        for w in toks:
            if len(out) >= limit:
                break
            if len(w) < 4 or w.isdigit():
                continue
            s = f"<{w}>"
            out += [base + zlib.crc32(f"#{s[i : i + n]}".encode()) % self.n_buckets
                    for n in range(lo, hi + 1) for i in range(min(len(s) - n + 1, limit))]
        return out[:limit]

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """[N, L] int32, L = longest row in this batch (padding never changes the mean)."""
        rows = [self.ids(t) for t in texts]
        out = np.zeros((len(rows), max(1, max((len(r) for r in rows), default=1))), dtype=np.int32)
        for i, r in enumerate(rows):
            out[i, : len(r)] = r
        return out

    def to_json(self) -> dict:
        words = sorted(self.vocab, key=self.vocab.__getitem__)
        return {"words": words, "n_buckets": self.n_buckets, "max_len": self.max_len, "char_ngrams": self.char_ngrams,
                "normalizer": self.normalizer}

    @classmethod
    def from_json(cls, d: dict) -> "TextEncoder":
        ng = d.get("char_ngrams")  # absent in artifacts written before subwords: none
        # absent in artifacts written before the boilerplate-stripping normalizer: v1
        return cls({w: i + 1 for i, w in enumerate(d["words"])}, int(d["n_buckets"]), int(d["max_len"]),
                   tuple(ng) if ng else None, str(d.get("normalizer", "v1")))


# Word positions the convolution reads: `TextEncoder.ids` puts a row's word ids first, at most
# ``max_len`` (128) of them, then its bigram and subword ids.
CONV_POSITIONS = 128


def build_text_model(
    n_ids: int, n_words: int, n_labels: int, dim: int = 50, frozen_dim: int = 0, dropout: float = 0.2,
    hidden: int = 0, conv: int = 0,
) -> keras.Model:
    """ids [B, L] → softmax [B, n_labels].

    With ``frozen_dim`` > 0 a second, non-trainable word embedding (pretrained vectors) is
    averaged alongside: words that never occur in training titles (marketplace attribute
    words) then still carry their pretrained meaning into the classifier, which fine-tuned
    vectors of unseen words would not (they stay where they started while the rest move).
    With ``conv`` > 0, ``conv`` filters over windows of three consecutive words (both
    embeddings), max-pooled over the text, join the averages: the bag cannot tell "midi
    design, sleeveless" from the same words in other phrases. Padding never changes the result.
    """
    ids = keras.Input(shape=(None,), dtype="int32", name="ids")
    # expand_dims rather than [..., None]: the latter becomes a StridedSlice with new_axis_mask,
    # which LiteRT's builtin ops cannot run (models.engine converts this graph for CPUs).
    mask = keras.ops.expand_dims(keras.ops.cast(keras.ops.not_equal(ids, PAD), "float32"), -1)
    count = keras.ops.maximum(keras.ops.sum(mask, axis=1), 1.0)
    emb = keras.layers.Embedding(n_ids, dim, embeddings_initializer="zeros", name="embedding")(ids)
    h = keras.ops.sum(emb * mask, axis=1) / count
    word_ids = keras.ops.where(keras.ops.less_equal(ids, n_words), ids, PAD)
    wmask = keras.ops.expand_dims(keras.ops.cast(keras.ops.not_equal(word_ids, PAD), "float32"), -1)
    parts = [h]
    if frozen_dim:
        frozen = keras.layers.Embedding(1 + n_words, frozen_dim, trainable=False, name="frozen")(word_ids)
        parts.append(keras.ops.sum(frozen * wmask, axis=1) / keras.ops.maximum(keras.ops.sum(wmask, axis=1), 1.0))
    if conv:
        words = wmask[:, :CONV_POSITIONS]
        seq = [emb[:, :CONV_POSITIONS]] + ([frozen[:, :CONV_POSITIONS]] if frozen_dim else [])
        seq = (keras.layers.Concatenate()(seq) if len(seq) > 1 else seq[0]) * words
        # ReLU outputs are >= 0, so zeroing non-word positions keeps them out of the max
        grams = keras.layers.Conv1D(conv, 3, padding="same", activation="relu", name="conv")(seq) * words
        parts.append(keras.ops.max(grams, axis=1))
    if len(parts) > 1:
        h = keras.layers.Concatenate()(parts)
    h = keras.layers.Dropout(dropout)(h)
    if hidden:  # one ReLU layer lets cues combine (a length cue + a neckline → DRESS, a neckline alone → TOPS)
        h = keras.layers.Dense(hidden, activation="relu", name="hidden")(h)
    out = keras.layers.Dense(n_labels, activation="softmax", name="softmax")(h)
    return keras.Model(ids, out, name="text_model")


class TextModel:
    """Encoder + Keras model + source labels: the text half of an artifact."""

    def __init__(self, encoder: TextEncoder, model: keras.Model, labels: Sequence[str], config: dict):
        self.encoder, self.model, self.labels, self.config = encoder, model, tuple(labels), dict(config)

    @classmethod
    def create(cls, encoder: TextEncoder, labels: Sequence[str], **config) -> "TextModel":
        model = build_text_model(encoder.n_ids, len(encoder.vocab), len(labels), **config)
        return cls(encoder, model, labels, config)

    def predict_proba(self, texts: Sequence[str], batch_size: int = 512) -> np.ndarray:
        """[N, S] float32 distributions over the source labels."""
        out = [
            np.asarray(self.model(self.encoder.encode(texts[i : i + batch_size]), training=False))
            for i in range(0, len(texts), batch_size)
        ]
        return np.concatenate(out) if out else np.zeros((0, len(self.labels)), np.float32)

    def quantize(self) -> None:
        """Round weights to float16 in place, so the saved artifact predicts exactly like this model."""
        self.model.set_weights([w.astype(np.float16).astype(np.float32) for w in self.model.get_weights()])


def save_text_model(tm: TextModel, directory: str | Path) -> None:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    meta = {"encoder": tm.encoder.to_json(), "labels": list(tm.labels), "config": tm.config}
    (d / "text_vocab.json").write_text(json.dumps(meta))
    np.savez_compressed(d / "text_weights.npz", *[w.astype(np.float16) for w in tm.model.get_weights()])


def load_text_model(directory: str | Path) -> TextModel:
    d = Path(directory)
    meta = json.loads((d / "text_vocab.json").read_text())
    tm = TextModel.create(TextEncoder.from_json(meta["encoder"]), meta["labels"], **meta["config"])
    with np.load(d / "text_weights.npz") as z:
        tm.model.set_weights([z[f"arr_{i}"].astype(np.float32) for i in range(len(z.files))])
    return tm
