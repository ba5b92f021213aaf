"""Text encoder, a small real training run, and the float16 artifact round trip."""
from __future__ import annotations

import zlib

import numpy as np
import pytest

from models.text_model import TextEncoder, load_text_model, save_text_model
from training import data
from training.train_text import train_text_model


def test_encoder_is_deterministic_and_hashes_bigrams():
    enc = TextEncoder.build(["red cotton shirt", "blue cotton shirt", "red dress"], n_buckets=1000)
    assert enc.vocab == {"cotton": 1, "red": 2, "shirt": 3, "blue": 4, "dress": 5}  # by count, then name
    ids = enc.encode(["Red <b>Cotton</b> SHIRT", "unknown dress"])
    base = 1 + len(enc.vocab)
    bigram = lambda a, b: base + zlib.crc32(f"{a} {b}".encode()) % 1000  # noqa: E731
    assert ids.dtype == np.int32
    assert ids[0].tolist() == [2, 1, 3, bigram("red", "cotton"), bigram("cotton", "shirt")]
    # the unknown word is dropped, its bigram is still hashed; the row is padded with 0
    assert ids[1].tolist() == [5, bigram("unknown", "dress"), 0, 0, 0]
    assert np.array_equal(ids, TextEncoder.from_json(enc.to_json()).encode(["red cotton shirt", "unknown dress"]))


def test_char_ngrams_link_unseen_word_forms_and_survive_json():
    enc = TextEncoder.build(["red skirt"], n_buckets=2**16, char_ngrams=(3, 5))
    plural, other = set(enc.ids("skirts")), set(enc.ids("dress"))
    assert plural  # an out-of-vocabulary word still gets features
    assert len(plural & set(enc.ids("skirt"))) >= 6 and not plural & other  # shares "<sk", "ski", "kirt", ...
    assert enc.ids("red") == [enc.vocab["red"]]  # words under 4 letters add no n-grams
    back = TextEncoder.from_json(enc.to_json())
    assert back == enc and back.ids("tringular skirts") == enc.ids("tringular skirts")
    old = enc.to_json()
    del old["char_ngrams"]  # an artifact written before subwords existed
    assert TextEncoder.from_json(old).ids("skirts") == []


def test_encoder_truncates_long_texts():
    enc = TextEncoder({"a": 1}, n_buckets=10, max_len=3)
    assert enc.encode(["a a a a a a"]).shape == (1, 3 + 2)


@pytest.fixture(scope="module")
def small_run():
    df = data.load_catalogue()
    space = data.label_space(df, data.article_type_targets())
    y = space.encode(df["articleType"])
    tr, te = data.split(df, y)
    rng = np.random.default_rng(0)
    tr, te = np.sort(rng.choice(tr, 3000, replace=False)), np.sort(rng.choice(te, 600, replace=False))
    titles = df["productDisplayName"].tolist()
    tm, hist = train_text_model([titles[i] for i in tr], y[tr], [], y[:0], space.labels, [titles[i] for i in tr],
                                init="random", epochs=3, seed=1, n_buckets=2**12, verbose=0)
    return tm, [titles[i] for i in te], y[te], space


def test_small_training_learns(small_run):
    tm, texts, y, space = small_run
    p = tm.predict_proba(texts)
    assert p.shape == (len(texts), len(space.labels))
    np.testing.assert_allclose(p.sum(axis=1), 1.0, atol=1e-5)
    chance = np.bincount(y).max() / len(y)
    assert (p.argmax(1) == y).mean() > max(0.6, 2 * chance)


def test_save_load_predicts_identically(small_run, tmp_path):
    tm, texts, _, _ = small_run
    save_text_model(tm, tmp_path)
    loaded = load_text_model(tmp_path)
    assert loaded.labels == tm.labels
    assert np.array_equal(loaded.predict_proba(texts), tm.predict_proba(texts))
    assert (tmp_path / "text_weights.npz").stat().st_size < 15e6


def _batches(texts, bucketed: bool):
    from training.train_text import _dataset

    enc = TextEncoder.build(texts, char_ngrams=(3, 5))
    y = np.arange(len(texts)) % 3
    ds = _dataset(enc, texts, np.eye(3, dtype=np.float32)[y], np.arange(len(texts), dtype=np.float32), 8, 0, bucketed)
    return enc, [(np.asarray(ids), np.asarray(w)) for ids, _, w in ds]


def test_length_bucketed_batches_keep_every_row_once_and_pad_less():
    """Titles (~80 ids) and long descriptions (~2,000) mixed: bucketed batches still hold each row
    exactly once per epoch, with its own ids, but pad far less than batches of mixed lengths."""
    rng = np.random.default_rng(0)
    words = [f"word{i}" for i in range(300)]
    texts = [" ".join(rng.choice(words, size=int(n))) for n in rng.choice([4, 6, 60, 120], size=200)]
    enc, plain = _batches(texts, bucketed=False)
    _, bucketed = _batches(texts, bucketed=True)
    for batches in (plain, bucketed):
        seen = np.concatenate([w for _, w in batches]).astype(int)  # the weight column carries the row number
        assert sorted(seen) == list(range(len(texts)))
    for ids, w in bucketed:
        for row, i in zip(ids, w.astype(int)):
            want = enc.ids(texts[i])
            assert list(row[: len(want)]) == want and not row[len(want):].any()
    padded = {name: sum(ids.size for ids, _ in b) for name, b in (("plain", plain), ("bucketed", bucketed))}
    assert padded["bucketed"] < 0.6 * padded["plain"], padded


def _tiny_model(conv: int, seed: int = 3):
    """A tiny encoder and model with random weights (embeddings start at zero otherwise)."""
    from models.text_model import TextModel

    enc = TextEncoder.build(["midi design sleeveless", "short design long sleeve", "v-neck dress"], n_buckets=64)
    tm = TextModel.create(enc, ["a", "b", "c"], dim=8, frozen_dim=8, **({"conv": conv} if conv else {}))
    rng = np.random.default_rng(seed)
    tm.model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in tm.model.get_weights()])
    emb = tm.model.get_layer("embedding")
    table = emb.get_weights()[0]
    table[1 + len(enc.vocab):] = 0.0  # no bigram features: the bag of words alone is blind to word order
    emb.set_weights([table])
    tm.quantize()  # float16 weights, as training leaves them: the saved copy predicts the same
    return tm


def test_word_convolution_reads_word_order_and_ignores_padding(tmp_path):
    """The convolution's point is phrases: the same words in another order give another answer,
    which the bag of words alone cannot; padding (batches and LiteRT pad rows) changes nothing."""
    tm, bag = _tiny_model(conv=4), _tiny_model(conv=0)
    texts = ["midi design sleeveless", "sleeveless midi design"]
    assert not np.allclose(*tm.predict_proba(texts), atol=1e-4)
    np.testing.assert_allclose(*bag.predict_proba(texts), atol=1e-6)  # control: the bag cannot tell them apart

    ids = tm.encoder.encode(texts)
    padded = np.pad(ids, ((0, 0), (0, 37)))
    np.testing.assert_allclose(tm.model(ids).numpy(), tm.model(padded).numpy(), atol=1e-6)

    save_text_model(tm, tmp_path)
    back = load_text_model(tmp_path)
    assert back.config["conv"] == 4
    np.testing.assert_allclose(back.predict_proba(texts), tm.predict_proba(texts), atol=1e-6)


def test_word_convolution_converts_to_litert_with_the_same_answers():
    from models.engine import LiteRTRunner, convert_to_litert, pad_columns

    tm = _tiny_model(conv=4)
    ids = tm.encoder.encode(["midi design sleeveless", "v-neck dress short sleeve", "unknown words only"])
    runner = LiteRTRunner(convert_to_litert(tm.model, None, "conv-test"))
    np.testing.assert_allclose(runner(pad_columns(ids, 32)), tm.model(ids).numpy(), atol=1e-5)
