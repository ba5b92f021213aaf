"""Does reduced-scale decoding change what the image model sees or how well it does?

Held-out catalogue images (the split ``shelver evaluate`` uses) are enlarged ``--scale`` times and
re-encoded as JPEG and PNG, standing in for big marketplace photos. Each is prepared two ways:
the full-size path (full decode, pad, one bicubic resize: prepare_image before shrinking existed)
and the serving path (``consumer.adapters.images.decode_image`` with JPEG draft / box reduction, then
``prepare_image``). Prints the image model's top-1 accuracy for both, their agreement, and the mean
absolute pixel difference; also checks that no original catalogue image is ever shrunk.

    python benchmarks/decode_parity.py --n 400 --scale 16   # 8x and less: nothing is shrunk
"""
from __future__ import annotations

import argparse
import io
import json
import time

import numpy as np
from PIL import Image, ImageOps

from consumer.config import Settings
from consumer.adapters.images import decode_image
from models.pixels import REDUCING_GAP, prepare_image
from training.data import article_type_targets, label_space, load_catalogue, split


def full_size_path(img: Image.Image, size) -> np.ndarray:
    height, width = size
    img = ImageOps.exif_transpose(img).convert("RGB")
    w, h = img.size
    if w * height != h * width:
        cw, ch = max(w, round(h * width / height)), max(h, round(w * height / width))
        canvas = Image.new("RGB", (cw, ch), (255, 255, 255))
        canvas.paste(img, ((cw - w) // 2, (ch - h) // 2))
        img = canvas
    return np.asarray(img.resize((width, height), Image.Resampling.BICUBIC), dtype=np.uint8)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=600)
    ap.add_argument("--scale", type=int, default=16)
    args = ap.parse_args()

    from models.artifact import load_categorizer  # TensorFlow: after argument parsing

    settings = Settings()
    cat = load_categorizer(settings.resolved_artifact_dir())
    size = cat.image_size
    df = load_catalogue()
    space = label_space(df, article_type_targets())
    y = space.encode(df["articleType"])
    _, held = split(df, y)
    label_of = {lab: i for i, lab in enumerate(cat.labels)}

    never_shrunk = 0
    for p in df["image_path"]:
        with Image.open(p) as im:
            w, h = im.size
        never_shrunk += 1 / min(size[1] / w, size[0] / h) < 2 * REDUCING_GAP
    rng = np.random.default_rng(0)
    rows = rng.choice(held, size=min(args.n, len(held)), replace=False)
    truth = np.array([label_of[space.labels[y[i]]] for i in rows])

    report = {"catalogue_images": len(df), "catalogue_images_never_shrunk": int(never_shrunk),
              "n": len(rows), "scale": args.scale}
    for fmt in ("JPEG", "PNG"):
        full, served, t_full, t_served = [], [], 0.0, 0.0
        for i in rows:
            with Image.open(df["image_path"].iloc[i]) as im:
                big = im.convert("RGB").resize((im.width * args.scale, im.height * args.scale), Image.Resampling.BICUBIC)
            buf = io.BytesIO()
            big.save(buf, fmt, **({"quality": 90} if fmt == "JPEG" else {}))
            data = buf.getvalue()
            t0 = time.perf_counter()
            full.append(full_size_path(Image.open(io.BytesIO(data)), size))
            t1 = time.perf_counter()
            served.append(prepare_image(decode_image(data, 40_000_000, 10.0, size), size))
            t_served += time.perf_counter() - t1
            t_full += t1 - t0
        full, served = np.stack(full), np.stack(served)
        p_full = cat._image_fn(full).numpy().argmax(1)
        p_served = cat._image_fn(served).numpy().argmax(1)
        report[fmt] = {
            "acc_full_size": round(float((p_full == truth).mean()), 4),
            "acc_reduced": round(float((p_served == truth).mean()), 4),
            "top1_agreement": round(float((p_full == p_served).mean()), 4),
            "mean_abs_pixel_diff": round(float(np.abs(full.astype(int) - served.astype(int)).mean()), 3),
            "ms_per_image_full_size": round(1e3 * t_full / len(rows), 1),
            "ms_per_image_reduced": round(1e3 * t_served / len(rows), 1),
        }
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
