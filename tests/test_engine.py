"""The inference engines: LiteRT (CPU) and the TensorFlow graph (GPU path) agree on real data.

The TensorFlow engine is what runs on a GPU; these tests force it on this CPU machine so that
path stays covered where no GPU exists.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from models.engine import chunk_rows, content_key, int8_accepted, pad_columns, resolve_engine

# Largest difference allowed between the engines' probabilities: both run the same fp32 weights,
# differing only in kernel arithmetic order (measured: ≈ 3e-6 on the image model).
PROB_ATOL = 1e-4


def test_auto_picks_litert_without_gpu_and_tensorflow_with_one():
    assert resolve_engine("auto", gpu_available=False) == "litert"
    assert resolve_engine(None, gpu_available=False) == "litert"
    assert resolve_engine("auto", gpu_available=True) == "tensorflow"


def test_auto_picks_the_8bit_image_engine_only_where_it_was_accepted_and_never_over_a_gpu():
    assert resolve_engine("auto", gpu_available=False, int8_ok=True) == "litert-int8"
    assert resolve_engine("auto", gpu_available=False, int8_ok=False) == "litert"
    assert resolve_engine("auto", gpu_available=True, int8_ok=True) == "tensorflow"
    assert resolve_engine("litert-int8", gpu_available=False) == "litert-int8"  # forced: the operator's call


def test_int8_is_accepted_only_from_an_accepting_report_on_a_cpu_with_the_measured_extensions():
    report = {"accepted": True, "cpu": {"vector_extensions": ["avx2", "avx512f", "avx512_vnni"]}}
    vnni = {"fpu", "avx2", "avx512f", "avx512_vnni", "amx_int8"}
    assert int8_accepted(report, vnni)
    assert not int8_accepted(report, {"fpu", "avx2", "avx512f"})  # no VNNI: the measured gain does not carry over
    assert not int8_accepted({**report, "accepted": False}, vnni)  # measured slower or less accurate
    assert not int8_accepted(None, vnni)  # never quantized
    assert not int8_accepted({"accepted": True}, vnni)  # a report that does not say where it was measured


def test_an_explicit_engine_is_kept_whatever_the_hardware():
    assert resolve_engine("tensorflow", gpu_available=False) == "tensorflow"
    assert resolve_engine("LiteRT", gpu_available=True) == "litert"


def test_unknown_engine_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="auto, tensorflow, litert"):
        resolve_engine("onnx", gpu_available=False)


def test_pad_columns_rounds_up_with_zeros_and_keeps_aligned_input():
    ids = np.arange(1, 7, dtype=np.int32).reshape(2, 3)
    padded = pad_columns(ids, 4)
    assert padded.shape == (2, 4) and padded.dtype == np.int32
    assert np.array_equal(padded[:, :3], ids) and not padded[:, 3:].any()
    assert pad_columns(padded, 4) is padded


def test_chunk_rows_covers_the_batch_in_order_with_two_equal_chunks_per_worker():
    parts = chunk_rows(32, workers=2)
    assert [(p.start, p.stop) for p in parts] == [(0, 8), (8, 16), (16, 24), (24, 32)]
    for rows in range(1, 70):
        for workers in (1, 2, 3, 16):
            parts = chunk_rows(rows, workers)
            assert [i for p in parts for i in range(p.start, p.stop)] == list(range(rows))
            sizes = [p.stop - p.start for p in parts]
            assert max(sizes) - min(sizes) <= 1  # no worker gets a round more than another
            assert len(parts) % workers == 0 or len(parts) == rows < workers


def test_chunk_rows_balances_rows_per_worker_instead_of_leaving_one_worker_a_round_alone():
    # 12 rows on 2 workers were 4 + 4 + 4: one worker ran 8 rows while the other ran 4
    assert [p.stop - p.start for p in chunk_rows(12, workers=2)] == [6, 6]
    assert [p.stop - p.start for p in chunk_rows(17, workers=2)] == [5, 4, 4, 4]


def test_chunk_rows_keeps_small_batches_on_all_workers_and_big_ones_out_of_tiny_chunks():
    assert len(chunk_rows(3, workers=2)) == 2  # a small batch still uses both cores
    assert len(chunk_rows(1, workers=2)) == 1
    assert all(p.stop - p.start >= 4 for p in chunk_rows(64, workers=16))  # not 32 invocations of 2 rows
    assert chunk_rows(0, workers=2) == []


def test_content_key_changes_with_the_bytes(tmp_path):
    f = tmp_path / "w.npz"
    f.write_bytes(b"a")
    k1 = content_key([f], "tf-2.20")
    assert content_key([f], "tf-2.20") == k1
    assert content_key([f], "tf-2.21") != k1
    f.write_bytes(b"b")
    assert content_key([f], "tf-2.20") != k1


def test_settings_refuse_an_unknown_engine(monkeypatch):
    from pydantic import ValidationError

    from consumer.config import Settings

    monkeypatch.setenv("SHELVER_INFERENCE_ENGINE", "cuda")
    with pytest.raises(ValidationError, match="inference_engine"):
        Settings()


@pytest.fixture(scope="module")
def catalogue_inputs():
    from training.data import data_dir, load_catalogue

    rows = load_catalogue(data_dir(None)).sample(64, random_state=7)
    return list(rows["productDisplayName"]), list(rows["image_path"])


@pytest.fixture(scope="module")
def engines():
    from consumer.config import Settings
    from models.artifact import load_categorizer

    path = Settings().resolved_artifact_dir()
    with pytest.MonkeyPatch.context() as mp:  # the GPU path, forced the way an operator would force it
        mp.setenv("SHELVER_INFERENCE_ENGINE", "tensorflow")
        graph = load_categorizer(path)
    return {"litert": load_categorizer(path, engine="litert"), "tensorflow": graph}


@pytest.mark.slow
def test_litert_and_tensorflow_give_the_same_categories_and_probabilities(engines, catalogue_inputs):
    texts, paths = catalogue_inputs
    lite, graph = engines["litert"], engines["tensorflow"]
    assert (lite.engine, graph.engine) == ("litert", "tensorflow")  # the latter chosen by the env variable
    images = [lite.prepare_image(Image.open(p)) for p in paths]
    images[5] = None  # one event without an image: text only, in both engines
    got = {}
    for name, cat in engines.items():
        image_p, text_p, used = cat.source_distributions(texts, images)
        got[name] = (image_p, text_p, cat.categorize(texts, images))
    (li, lt, ld), (gi, gt, gd) = got["litert"], got["tensorflow"]
    np.testing.assert_allclose(li, gi, atol=PROB_ATOL)
    np.testing.assert_allclose(lt, gt, atol=PROB_ATOL)
    assert [d.category for d in ld] == [d.category for d in gd]
    assert np.array_equal(li.argmax(1), gi.argmax(1))
    np.testing.assert_allclose([d.kl for d in ld], [d.kl for d in gd], atol=1e-3)


@pytest.mark.slow
def test_litert_results_do_not_depend_on_the_batch_size(engines, catalogue_inputs):
    texts, paths = catalogue_inputs
    lite = engines["litert"]
    images = [lite.prepare_image(Image.open(p)) for p in paths[:12]]
    whole, _, _ = lite.source_distributions(texts[:12], images)
    # sizes change from call to call: the interpreter is resized each time
    parts = [lite.source_distributions(texts[i:j], images[i:j])[0] for i, j in ((0, 7), (7, 8), (8, 12))]
    np.testing.assert_allclose(np.concatenate(parts), whole, atol=1e-5)


@pytest.mark.slow
def test_litert_rows_spread_over_several_interpreters_come_back_in_order_with_the_same_values(engines, catalogue_inputs):
    from models.engine import LiteRTRunner

    lite = engines["litert"]
    x = np.stack([lite.prepare_image(Image.open(p)) for p in catalogue_inputs[1][:13]])
    flatbuffer = lite._image_fn.flatbuffer
    one, three = LiteRTRunner(flatbuffer, workers=1), LiteRTRunner(flatbuffer, workers=3)
    assert len(chunk_rows(13, 3)) > 1
    np.testing.assert_allclose(three(x), one(x), atol=1e-6)
    np.testing.assert_allclose(three(x[:1]), one(x[:1]), atol=1e-6)  # one row: the multi-threaded interpreter


@pytest.mark.slow
def test_a_second_load_reads_the_cached_conversion_instead_of_converting(engines, monkeypatch):
    import tensorflow as tf

    from consumer.config import Settings
    from models.artifact import load_categorizer

    def no_conversion(*a, **k):
        raise AssertionError("converted again although the artifact is unchanged")

    monkeypatch.setattr(tf.lite.TFLiteConverter, "from_keras_model", no_conversion)
    again = load_categorizer(Settings().resolved_artifact_dir(), engine="litert")
    assert again.engine == "litert"


def _litert_threads_cpu_s() -> float:
    """CPU seconds of this process's threads named litert… (what benchmarks/image_server.CpuMeter counts)."""
    import os
    from pathlib import Path

    total = 0.0
    for tid in os.listdir("/proc/self/task"):
        try:
            if Path(f"/proc/self/task/{tid}/comm").read_text().startswith("litert"):
                fields = Path(f"/proc/self/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


@pytest.mark.slow
@pytest.mark.parametrize("rows", [1, 8], ids=["one row (multi-threaded interpreter)", "split batch"])
def test_inference_cpu_is_spent_on_threads_named_litert(engines, catalogue_inputs, rows):
    import os

    from models.engine import LiteRTRunner

    lite = engines["litert"]
    x = np.stack([lite.prepare_image(Image.open(p)) for p in catalogue_inputs[1][:rows]])
    runner = LiteRTRunner(lite._image_fn.flatbuffer, workers=2)
    runner(x)  # pool threads start on the first call
    named, process = _litert_threads_cpu_s(), sum(os.times()[:2])
    for _ in range(max(4, 40 // rows)):
        runner(x)
    named, process = _litert_threads_cpu_s() - named, sum(os.times()[:2]) - process
    # Before the threads were named, a one-row batch ran on the caller and XNNPACK's unnamed
    # workers: none of its CPU was counted as inference.
    assert process > 0.05 and named > 0.8 * process, (named, process)


@pytest.fixture(scope="module")
def int8_and_images(engines, catalogue_inputs):
    """The default artifact on the 8-bit image engine, and the catalogue sample's prepared images."""
    from consumer.config import Settings
    from models.artifact import load_categorizer
    from models.engine import INT8_FILE

    path = Settings().resolved_artifact_dir()
    if not (path / INT8_FILE).exists():
        pytest.skip(f"{path.name} has no {INT8_FILE} (python -m training.quantize)")
    return load_categorizer(path, engine="litert-int8"), [engines["litert"].prepare_image(Image.open(p))
                                                          for p in catalogue_inputs[1]]


@pytest.mark.slow
def test_the_8bit_image_engine_chooses_as_fp32_does_on_catalogue_products(engines, catalogue_inputs, int8_and_images):
    int8, images = int8_and_images
    texts, lite = catalogue_inputs[0], engines["litert"]
    fp32_image, fp32_text, _ = lite.source_distributions(texts, images)
    q_image, q_text, _ = int8.source_distributions(texts, images)
    np.testing.assert_array_equal(q_text, fp32_text)  # the text model stays fp32 LiteRT
    np.testing.assert_allclose(q_image.sum(1), 1.0, atol=1e-5)  # renormalized: its softmax is 8-bit
    assert not np.allclose(q_image, fp32_image, atol=1e-4)  # really the other model
    agree = np.mean([a.category == b.category for a, b in zip(int8.categorize(texts, images),
                                                               lite.categorize(texts, images))])
    assert agree >= 63 / 64  # quantization.json: 99.5% or more on the held-out split


@pytest.mark.slow
def test_with_another_products_title_the_8bit_engine_still_weighs_image_and_text_as_fp32_does(
        engines, catalogue_inputs, int8_and_images):
    # Where image and text disagree: the 8-bit softmax's exact zeros (floored at 1e-12 in the geometric
    # mean) vetoed the text's class, and about half such pairs were decided by the image alone.
    from models.engine import INT8_FLOOR, int8_distributions

    int8, images = int8_and_images
    texts, lite = catalogue_inputs[0], engines["litert"]
    others = texts[1:] + texts[:1]  # each image with the next product's title
    q_image, _, _ = int8.source_distributions(others, images)
    assert q_image.min() > 0.5 * INT8_FLOOR  # no exact zeros left
    np.testing.assert_allclose(int8_distributions(np.array([[0.5, 0.5, 0.0]])), [[0.4990, 0.4990, 0.0020]], atol=1e-4)
    agree = np.mean([a.category == b.category for a, b in zip(int8.categorize(others, images),
                                                               lite.categorize(others, images))])
    assert agree >= 58 / 64  # about half before


def test_forcing_the_8bit_engine_without_its_model_fails_with_the_command_that_makes_it():
    import dataclasses

    from consumer.config import Settings
    from models.artifact import ArtifactCategorizer, load_artifact

    artifact = dataclasses.replace(load_artifact(Settings().resolved_artifact_dir()), source=None)
    with pytest.raises(ValueError, match="training.quantize"):
        ArtifactCategorizer(artifact, engine="litert-int8")
