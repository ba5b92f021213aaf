"""`benchmarks/gpu.py` (issue #18's GPU measurements), run on the CPU: the code a GPU machine runs, on the
committed artifact and real catalogue images, and its skip where TensorFlow sees no GPU."""
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import gpu  # noqa: E402


@pytest.fixture(scope="module")
def catalogue_batch():
    from consumer.config import Settings
    from models.pixels import prepare_images
    from training.data import data_dir, load_catalogue

    rows = load_catalogue(data_dir(None)).sample(16, random_state=3)
    pixels = np.stack(prepare_images([Image.open(p) for p in rows["image_path"]], (192, 144)))
    return Settings().resolved_artifact_dir(), pixels, list(rows["productDisplayName"])


def test_without_a_gpu_the_benchmark_says_why_it_skipped_and_the_report_says_so(catalogue_batch):
    if gpu.gpu_devices():
        pytest.skip("this machine has a GPU: the measurement runs instead")
    artifact, pixels, texts = catalogue_batch
    result = gpu.run(artifact, pixels, texts, batches=(4,))
    assert result == {"skipped": "TensorFlow sees no GPU on this machine"}
    assert any(line.startswith("Skipped: TensorFlow sees no GPU") for line in gpu.markdown(result))


@pytest.mark.slow
def test_the_gpu_benchmark_measures_every_batch_in_both_precisions_and_mixed_precision_agrees(catalogue_batch):
    artifact, pixels, texts = catalogue_batch
    result = gpu.run(artifact, pixels, texts, batches=(4, 8), rounds=1, allow_cpu=True)
    measured = {(r["what"], r["precision"], r["batch"]) for r in result["rows"]}
    assert measured == {(what, precision, b) for b in (4, 8) for what, precision in
                        (("image model", "float32"), ("image model", "mixed_float16"), ("bare model", "float32"))}
    assert all(r["per_s"] > 0 for r in result["rows"])
    # float16 compute keeps the float32 model's answers on real catalogue images
    assert result["fp16_top1_agreement"] >= 15 / 16
    assert 0 < result["fp16_max_abs_diff"] < 0.05
    table = gpu.markdown(result)
    assert "| image model | mixed_float16 | 8 |" in "\n".join(table)
    assert any("mixed precision / float32" in line for line in table)


def test_a_batch_larger_than_the_images_is_refused_rather_than_measured_on_nothing(catalogue_batch):
    artifact, pixels, texts = catalogue_batch
    with pytest.raises(ValueError, match="batch 32 needs at least as many images"):
        gpu.run(artifact, pixels, texts, batches=(32,), allow_cpu=True)
