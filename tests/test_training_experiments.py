"""Unit tests of the experiment tooling: `training.minilm`'s safetensors reader, WordPiece and PCA; crossfit's cache names."""
import json
import struct

import numpy as np

from training.minilm import WordPiece, pca_rows, read_safetensors


def _safetensors(tensors: dict[str, np.ndarray]) -> bytes:
    header, body = {}, b""
    for name, a in tensors.items():
        raw = a.tobytes()
        header[name] = {"dtype": {np.float32: "F32", np.float16: "F16"}[a.dtype.type], "shape": list(a.shape),
                        "data_offsets": [len(body), len(body) + len(raw)]}
        body += raw
    h = json.dumps({"__metadata__": {"format": "pt"}, **header}).encode()
    return struct.pack("<Q", len(h)) + h + body


def test_safetensors_reader_returns_each_tensor_with_its_shape_and_dtype():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = np.array([1.5, -2.0], np.float16)
    out = read_safetensors(_safetensors({"a": a, "b": b}))
    assert set(out) == {"a", "b"}
    np.testing.assert_array_equal(out["a"], a)
    assert out["b"].dtype == np.float16 and out["b"].tolist() == [1.5, -2.0]


def test_wordpiece_lowercases_strips_accents_splits_punctuation_and_takes_longest_pieces():
    vocab = {w: i for i, w in enumerate(["[UNK]", "t", "-", "shirt", "midi", "dress", "cafe", "un", "##zip", "##ped"])}
    tok = WordPiece(vocab)
    assert tok.ids("T-Shirt") == [vocab["t"], vocab["-"], vocab["shirt"]]
    assert tok.ids("Café  MIDI dress") == [vocab["cafe"], vocab["midi"], vocab["dress"]]
    assert tok.ids("unzipped") == [vocab["un"], vocab["##zip"], vocab["##ped"]]
    assert tok.ids("blazer") == [vocab["[UNK]"]]  # no piece covers it: the whole word is unknown


def test_pca_rows_keep_the_leading_axes_of_the_centred_rows():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3)) * [10.0, 1.0, 0.1] + 5.0
    y = pca_rows(x, 1)
    assert y.shape == (200, 1)
    assert abs(np.corrcoef(y[:, 0], x[:, 0])[0, 1]) > 0.99


def test_crossfit_variants_and_other_seeds_cache_apart_from_the_production_recipe():
    from training.crossfit import RECIPE, SEED, VARIANTS, recipe_name

    assert recipe_name("", SEED) == RECIPE  # the calibrator reads the production recipe's rows by this name
    names = {recipe_name(v, s) for v in VARIANTS for s in (SEED, SEED + 1)} | {recipe_name("", SEED + 1)}
    assert len(names) == 2 * len(VARIANTS) + 1 and RECIPE not in names


def test_teacher_labels_stay_inside_the_items_target_and_keep_the_prior_where_the_teacher_gives_nothing():
    from training.marketplace_eval import teacher_labels

    prior = np.array([[0.5, 0.5, 0.0], [0.0, 0.2, 0.8]], np.float32)
    teacher = np.array([[0.1, 0.3, 0.6], [0.9, 0.0, 0.0]], np.float32)
    out = teacher_labels(prior, teacher)
    np.testing.assert_allclose(out[0], [0.25, 0.75, 0.0])  # class 2 is outside the item's target
    np.testing.assert_allclose(out[1], prior[1])  # the teacher puts no mass on the target's classes


def test_marginal_loss_is_the_cross_entropy_for_one_class_and_scores_a_set_by_its_total_probability():
    from training.train_text import marginal_nll

    probs = np.array([[0.5, 0.3, 0.2], [0.5, 0.3, 0.2]], np.float32)
    allowed = np.array([[1, 0, 0], [0, 1, 1]], np.float32)
    loss = np.asarray(marginal_nll(allowed, probs))
    np.testing.assert_allclose(loss, [-np.log(0.5), -np.log(0.5)], rtol=1e-6)
    # moving mass between allowed classes changes nothing; moving it out of the set costs
    same = np.asarray(marginal_nll(allowed[1:], np.array([[0.5, 0.49, 0.01]], np.float32)))
    worse = np.asarray(marginal_nll(allowed[1:], np.array([[0.7, 0.2, 0.1]], np.float32)))
    np.testing.assert_allclose(same, -np.log(0.5), rtol=1e-6)
    assert worse[0] > same[0]
