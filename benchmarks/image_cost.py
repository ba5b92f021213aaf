"""What the image half costs around the model, per image, in core-milliseconds (this process's CPU time,
all threads): the fetcher's HTTP + decode from a local image server in its own process (as
``make benchmark`` serves them) at several fetch concurrencies, and the resize to the model's input,
Pillow's against ``models.pixels.resize_bicubic`` at the service's grouping. Alone (no broker, no model):

    python benchmarks/image_cost.py            # 1,024 catalogue images, model input 192x144
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def fetch_cost(base: str, names: list[str], concurrency: int, size: tuple[int, int], batch: int = 32) -> float:
    from consumer.adapters.images import ImageFetcher
    from consumer.config import Settings

    settings = Settings(image_allowed_hosts=["127.0.0.1"], image_fetch_concurrency=concurrency)
    urls = [f"{base}/{n}" for n in names]
    with ImageFetcher(settings, size) as fetcher:
        fetcher.fetch_many(urls[:batch])  # warm-up: connections
        start = time.process_time()
        for i in range(0, len(urls), batch):
            results = fetcher.fetch_many(urls[i:i + batch])
            if any(r.image is None for r in results):
                raise RuntimeError(f"fetch failed: {[r.error for r in results if r.error][:3]}")
        return (time.process_time() - start) / len(urls) * 1e3


def resize_cost(images, size: tuple[int, int], batch: int = 32) -> dict[str, float]:
    import numpy as np
    from PIL import Image

    from models.pixels import prepare_images

    height, width = size
    start = time.process_time()
    for img in images:
        np.asarray(img.resize((width, height), Image.Resampling.BICUBIC), dtype=np.uint8)
    pillow = (time.process_time() - start) / len(images) * 1e3
    start = time.process_time()
    for i in range(0, len(images), batch):
        prepare_images(images[i:i + batch], size)
    banded = (time.process_time() - start) / len(images) * 1e3
    return {"pillow_resize": pillow, "prepare_images": banded}


def arguments(doc: str) -> tuple[int, tuple[int, int]]:
    """(--images, --size as (height, width)): the options this script and ``curl_cost.py`` share."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--images", type=int, default=1024)
    ap.add_argument("--size", default="192x144", help="model input, HEIGHTxWIDTH")
    args = ap.parse_args()
    return args.images, tuple(int(v) for v in args.size.split("x"))


def main() -> None:
    count, size = arguments(__doc__)

    from PIL import Image

    from image_server import image_server

    from training.data import data_dir

    root = data_dir(None) / "images"
    names = sorted(p.name for p in root.glob("*.jpg"))[:count]
    with image_server(root) as (base, _pid):
        for concurrency in (16, 4, 1):
            print(f"HTTP + decode, {concurrency:2d} fetch threads: {fetch_cost(base, names, concurrency, size):.3f} core-ms per image")
    images = [Image.open(root / n).convert("RGB") for n in names]
    for name, ms in resize_cost(images, size).items():
        print(f"{name}: {ms:.3f} core-ms per image")


if __name__ == "__main__":
    main()
