"""The TensorFlow graph on a GPU (issue #18): the image model alone at batch 32, 64 and 128 in float32 and
in mixed precision (float16 compute, float32 softmax), and the bare model (image + text + choice, the
graph the service runs) at the same batches. `make benchmark` runs it where TensorFlow sees a GPU and
says it was skipped where it does not; end to end on the GPU is `run_all`'s ``tensorflow`` row, which
runs there on the GPU.

    python benchmarks/gpu.py                 # needs a GPU
    python benchmarks/gpu.py --allow-cpu     # the same code on the CPU (slow: to check the path)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BATCHES = (32, 64, 128)


def gpu_devices() -> list[str]:
    import tensorflow as tf

    return [d.name for d in tf.config.list_physical_devices("GPU")]


def mixed_precision_image_model(artifact):
    """The artifact's image model rebuilt under ``mixed_float16``, with the same (float32) weights."""
    import keras

    from models.image import DEFAULT_BACKBONE, build_image_classifier

    manifest = artifact.manifest
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy("mixed_float16")  # applies to the layers built now
    try:
        model = build_image_classifier(len(manifest["label_space"]["labels"]), tuple(manifest["image"]["size"]),
                                       imagenet=False, backbone=manifest["image"].get("backbone_id", DEFAULT_BACKBONE))
    finally:
        keras.mixed_precision.set_global_policy(previous)
    model.set_weights(artifact.image_model.get_weights())
    return model


def per_second(run, items: int, batch: int, rounds: int) -> float:
    """Items per second of ``run(start, stop)`` over ``items`` in batches, after one untimed batch (tracing)."""
    run(0, batch)
    done, start = 0, time.perf_counter()
    for _ in range(rounds):
        for i in range(0, items - batch + 1, batch):
            run(i, i + batch)  # returns numpy: the device has finished the batch
            done += batch
    return done / (time.perf_counter() - start)


def run(artifact_dir: Path, pixels: np.ndarray, texts: list[str], batches=BATCHES, rounds: int = 5,
        allow_cpu: bool = False) -> dict:
    """``{"skipped": reason}`` without a GPU (unless ``allow_cpu``), else the rows and fp16's agreement."""
    devices = gpu_devices()
    if not devices and not allow_cpu:
        return {"skipped": "TensorFlow sees no GPU on this machine"}
    too_big = [b for b in batches if b > len(pixels)]
    if too_big:
        raise ValueError(f"batch {too_big[0]} needs at least as many images, got {len(pixels)}")
    import tensorflow as tf

    from models.artifact import load_categorizer
    from models.engine import tensorflow_runner

    cat = load_categorizer(artifact_dir, engine="tensorflow")
    spec = tf.TensorSpec([None, *pixels.shape[1:]], tf.uint8)
    image_fns = {"float32": tensorflow_runner(cat.artifact.image_model, spec),
                 "mixed_float16": tensorflow_runner(mixed_precision_image_model(cat.artifact), spec)}
    images = list(pixels)
    rows = []
    for batch in batches:
        for precision, fn in image_fns.items():
            rate = per_second(lambda a, b, fn=fn: fn(pixels[a:b]), len(pixels), batch, rounds)
            rows.append({"what": "image model", "precision": precision, "batch": batch, "per_s": rate})
        rate = per_second(lambda a, b: cat.categorize(texts[a:b], images[a:b]), len(pixels), batch, rounds)
        rows.append({"what": "bare model", "precision": "float32", "batch": batch, "per_s": rate})
    p32 = np.concatenate([image_fns["float32"](pixels[i:i + 64]) for i in range(0, len(pixels), 64)])
    p16 = np.concatenate([image_fns["mixed_float16"](pixels[i:i + 64]) for i in range(0, len(pixels), 64)])
    return {"devices": devices or ["CPU (allowed for checking the path)"], "rows": rows, "images": len(pixels),
            "fp16_top1_agreement": float(np.mean(p32.argmax(1) == p16.argmax(1))),
            "fp16_max_abs_diff": float(np.abs(p32 - p16.astype(np.float32)).max())}


def markdown(result: dict) -> list[str]:
    """The report's GPU section."""
    lines = ["## GPU", ""]
    if "skipped" in result:
        return lines + [f"Skipped: {result['skipped']}. `benchmarks/gpu.py` measures the TensorFlow graph there "
                        "(image model at batch 32, 64 and 128 in float32 and mixed precision, and the bare model), "
                        "and the `tensorflow` rows above then run on the GPU.", ""]
    lines += [f"Devices: {', '.join(result['devices'])}. TensorFlow graph (`tensorflow` engine), "
              f"{result['images']} catalogue images per round.", "",
              "| measured | precision | batch | per second |", "|---|---|---:|---:|"]
    lines += [f"| {r['what']} | {r['precision']} | {r['batch']} | {r['per_s']:.1f} |" for r in result["rows"]]
    speed = {(r["precision"], r["batch"]): r["per_s"] for r in result["rows"] if r["what"] == "image model"}
    ratios = [f"{(speed[('mixed_float16', b)] / speed[('float32', b)]):.2f}x at batch {b}"
              for b in sorted({b for _, b in speed})]
    lines += ["", f"Image model, mixed precision / float32: {', '.join(ratios)}."]
    lines += ["", f"Mixed precision against float32 on the same images: top-1 source class agrees on "
              f"{100 * result['fp16_top1_agreement']:.1f}%, largest probability difference "
              f"{result['fp16_max_abs_diff']:.4f}.", ""]
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=512)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--allow-cpu", action="store_true", help="run on the CPU where there is no GPU")
    args = ap.parse_args()
    from PIL import Image

    from consumer.config import Settings
    from models.pixels import prepare_images
    from training.data import data_dir, load_catalogue

    artifact_dir = Settings().resolved_artifact_dir()
    size = tuple(json.loads((artifact_dir / "manifest.json").read_text())["image"]["size"])
    rows = load_catalogue(data_dir(None)).sample(args.images, random_state=0)
    pixels = np.stack(prepare_images([Image.open(p) for p in rows["image_path"]], size))
    result = run(artifact_dir, pixels, list(rows["productDisplayName"]), rounds=args.rounds, allow_cpu=args.allow_cpu)
    print("\n".join(markdown(result)))


if __name__ == "__main__":
    main()
