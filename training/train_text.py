"""Supervised training of the fastText-style text model, with a choice of word-vector init."""
from __future__ import annotations

import time
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from models.text_model import TextEncoder, TextModel
from training.cbow import glove_vectors, train_cbow, unit_rows

INITS = ("random", "cbow", "glove", "cbow+glove", "cbow+minilm")


def pretrained_vectors(
    encoder: TextEncoder, init: str, pretrain_texts: Sequence[str], dim: int, seed: int, cbow_epochs: int = 5,
    pretrain_weights: Sequence[int] | None = None,
) -> np.ndarray | None:
    """Unit-length word vectors [1 + V, dim] for ``init``; None for "random"."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, not {init!r}")
    if init == "random":
        return None
    rng = np.random.default_rng(seed)
    words = sorted(encoder.vocab, key=encoder.vocab.__getitem__)
    start = None
    if "glove" in init:
        if dim != 50:
            raise ValueError("GloVe 6B vectors are 50-dimensional: use dim=50 with a glove init")
        g, found = glove_vectors(words)
        fill = rng.normal(size=g.shape).astype(np.float32)  # words GloVe lacks (brands, codes) start random
        start = np.vstack([np.zeros((1, dim), np.float32), unit_rows(np.where(found[:, None], g, fill))])
    if "minilm" in init:  # a sentence encoder's words, PCA'd to the model's width (`training.minilm`)
        from training.minilm import pca_rows, word_vectors

        start = np.vstack([np.zeros((1, dim), np.float32), unit_rows(pca_rows(word_vectors(words), dim))])
    if "cbow" in init:
        start = train_cbow(pretrain_texts, encoder, dim=dim, init=start, text_weights=pretrain_weights,
                           epochs=cbow_epochs, seed=seed)
    return unit_rows(start)


# Upper bounds of the id-count buckets a training batch is drawn from (see `_dataset`).
LENGTH_BUCKETS = (24, 48, 96, 160, 256, 384, 512, 768, 1024, 1536)


def _dataset(encoder: TextEncoder, texts, y, w, batch_size: int, shuffle_seed: int | None,
             bucketed: bool = False) -> tf.data.Dataset:
    """Batches of padded ids. ``bucketed`` draws each batch from texts of similar id counts (a
    title has ~80 ids, a long description ~2,000): padding a batch to its longest row then costs
    little, which makes an epoch about 2.5x cheaper on CPU. Batches still come in shuffled order."""
    rows = [encoder.ids(t) or [0] for t in texts]
    ragged = tf.RaggedTensor.from_row_lengths(
        np.concatenate([np.asarray(r, np.int32) for r in rows]), [len(r) for r in rows]
    )
    ds = tf.data.Dataset.from_tensor_slices((ragged, y.astype(np.float32), w.astype(np.float32)))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(rows), seed=shuffle_seed, reshuffle_each_iteration=True)
    if not bucketed:
        return ds.ragged_batch(batch_size).map(lambda r, y, w: (r.to_tensor(), y, w)).prefetch(2)
    # Rows are typed RaggedTensorSpec(ragged_rank=0) but arrive in `map` as dense tensors: passing them
    # through re-types them as TensorSpec, which `bucket_by_sequence_length`'s padded batches need.
    ds = ds.map(lambda r, y, w: (r, y, w))
    ds = ds.bucket_by_sequence_length(
        lambda r, y, w: tf.shape(r)[0], list(LENGTH_BUCKETS), [batch_size] * (len(LENGTH_BUCKETS) + 1)
    )
    if shuffle_seed is not None:  # buckets fill at different rates: mix their batches again
        ds = ds.shuffle(64, seed=shuffle_seed + 1, reshuffle_each_iteration=True)
    return ds.prefetch(2)


def marginal_nll(allowed, probs):
    """−log of the probability the model puts on a row's allowed classes (a 0/1 mask)."""
    mass = keras.ops.sum(allowed * probs, axis=-1)
    return -keras.ops.log(keras.ops.clip(mass, 1e-7, 1.0))


LOSSES = {"cross_entropy": "categorical_crossentropy", "marginal": marginal_nll}


def _targets(y: np.ndarray, n_labels: int) -> np.ndarray:
    """Class indices → one-hot; soft rows (already [N, S]) pass through."""
    y = np.asarray(y)
    return y if y.ndim == 2 else np.eye(n_labels, dtype=np.float32)[y]


def train_text_model(
    train_texts: Sequence[str],
    train_y: np.ndarray,
    val_texts: Sequence[str],
    val_y: np.ndarray,
    labels: Sequence[str],
    pretrain_texts: Sequence[str],
    init: str = "cbow+glove",
    epochs: int = 6,
    seed: int = 0,
    *,
    sample_weight: np.ndarray | None = None,
    pretrain_weights: Sequence[int] | None = None,
    dim: int = 50,
    frozen: bool = True,
    n_buckets: int = 2**16,
    char_ngrams: tuple[int, int] | None = None,
    lr: float = 5e-3,
    batch_size: int = 64,
    dropout: float = 0.2,
    verbose: int = 1,
    normalizer: str = "v1",
    hidden: int = 0,
    bucketed: bool = False,
    conv: int = 0,
    loss: str = "cross_entropy",
) -> tuple[TextModel, dict]:
    """Train on (text, label) pairs; labels are class indices or soft rows [N, S].

    The vocabulary covers the training and pretraining text, so marketplace-only words get
    rows (and pretrained vectors) too. ``frozen`` adds the pretrained vectors as a fixed
    second channel (ignored for init="random"). ``char_ngrams`` turns on hashed character
    n-gram features (see `TextEncoder`). ``conv`` adds that many word-trigram filters (`build_text_model`). The returned model's weights are already
    rounded to float16, i.e. identical to what `save_text_model` writes. ``loss="marginal"`` reads a
    soft row only as the set of classes it allows (its non-zero entries) and maximises the probability
    of that set, so the model, not the catalogue's frequencies, decides which of a target's classes an
    item is (one-hot rows: the same as the cross-entropy).
    """
    if loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}: choose one of {sorted(LOSSES)}")
    t0 = time.time()
    keras.utils.set_random_seed(seed)
    encoder = TextEncoder.build(list(pretrain_texts) + list(train_texts), n_buckets=n_buckets, char_ngrams=char_ngrams,
                                normalizer=normalizer)
    vectors = pretrained_vectors(encoder, init, pretrain_texts, dim, seed, pretrain_weights=pretrain_weights)
    use_frozen = frozen and vectors is not None
    tm = TextModel.create(encoder, labels, dim=dim, frozen_dim=dim if use_frozen else 0, dropout=dropout,
                          **({"hidden": hidden} if hidden else {}), **({"conv": conv} if conv else {}))
    table = np.zeros((encoder.n_ids, dim), np.float32)  # bigram buckets start at zero
    n_words = 1 + len(encoder.vocab)
    rng = np.random.default_rng(seed)
    table[1:n_words] = vectors[1:] if vectors is not None else rng.uniform(-0.05, 0.05, (n_words - 1, dim))
    tm.model.get_layer("embedding").set_weights([table])
    if use_frozen:
        tm.model.get_layer("frozen").set_weights([vectors])

    n = len(labels)
    w = np.ones(len(train_texts), np.float32) if sample_weight is None else np.asarray(sample_weight, np.float32)
    train_targets = _targets(train_y, n)
    if loss == "marginal":
        train_targets = (train_targets > 0).astype(np.float32)
    train_ds = _dataset(encoder, train_texts, train_targets, w, batch_size, seed, bucketed)
    val_ds = None
    if len(val_texts):
        val_ds = _dataset(encoder, val_texts, _targets(val_y, n), np.ones(len(val_texts)), 512, None)
    tm.model.compile(
        optimizer=keras.optimizers.Adam(lr), loss=LOSSES[loss], metrics=["categorical_accuracy"]
    )
    hist = tm.model.fit(train_ds, validation_data=val_ds, epochs=epochs, verbose=verbose, shuffle=False)
    tm.quantize()
    history = {k: [float(v) for v in vs] for k, vs in hist.history.items()}
    history["seconds"] = time.time() - t0
    history["init"] = init
    return tm, history
