"""Throughput: bare model vs. the whole service through a real broker, batched vs. one at a time.

    python benchmarks/throughput.py [--batch-size 32] [--events 500] [--data DIR] [--tiny]

(a) ``model``: ``categorize()`` on pre-decoded, pre-fetched inputs in batches of B;
(b) ``end-to-end``: N sample events produced to fresh topics, the service run until N are committed
    (images fetched over HTTP from a local server), timed from the first partition assignment to the
    last commit (``run_all.bench_service``);
(c) ``end-to-end`` with ``max_batch_size=1``, the one-at-a-time loop.
Needs a broker at SHELVER_BOOTSTRAP_SERVERS (``scripts/kafka-local start``) and the catalogue
(SHELVER_DATA_DIR). ``--tiny`` uses the small test model instead of the trained artifact, to check
the harness itself.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

from image_server import image_server  # noqa: E402
from run_all import bench_service  # noqa: E402

from consumer.config import Settings  # noqa: E402
from consumer.logs import configure  # noqa: E402
from training.data import data_dir, load_catalogue  # noqa: E402


def load_model(settings: Settings, tiny: bool):
    if tiny:
        sys.path.insert(0, str(REPO / "tests"))
        from tiny_categorizer import TinyCategorizer

        return TinyCategorizer()
    from models.artifact import load_categorizer

    return load_categorizer(settings.resolved_artifact_dir())


def bench_model(model, catalogue, n: int, batch: int) -> float:
    rows = catalogue.sample(n, random_state=0)
    texts = list(rows["productDisplayName"])
    images = [model.prepare_image(Image.open(p)) for p in rows["image_path"]]
    model.categorize(texts[:batch], images[:batch])  # warm-up: graph tracing, allocations
    start = time.perf_counter()
    for i in range(0, n, batch):
        model.categorize(texts[i : i + batch], images[i : i + batch])
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--events", type=int, default=500)
    p.add_argument("--single-events", type=int, help="events for the one-at-a-time run (default: --events)")
    p.add_argument("--data", help="catalogue folder (default: SHELVER_DATA_DIR or the shared copy)")
    p.add_argument("--tiny", action="store_true", help="use the small test model (harness check)")
    args = p.parse_args(argv)

    settings = Settings()
    configure("WARNING")
    root = data_dir(args.data)
    catalogue = load_catalogue(root)
    model = load_model(settings, args.tiny)
    n, b = args.events, args.batch_size
    rows = [("model only", b, n, bench_model(model, catalogue, n, b))]
    with image_server(root / "images") as (url, _):
        rows.append(("end-to-end", b, n, bench_service(settings, model, catalogue, url, n, b, partitions=3).seconds))
        single = args.single_events or n
        rows.append(("end-to-end", 1, single,
                     bench_service(settings, model, catalogue, url, single, 1, partitions=3).seconds))

    print(f"model {model.model_version}, {settings.bootstrap_servers}")
    print(f"{'mode':<12} {'batch':>5} {'events':>7} {'seconds':>8} {'events/s':>9}")
    for mode, batch, count, secs in rows:
        print(f"{mode:<12} {batch:>5} {count:>7} {secs:>8.2f} {count / secs:>9.1f}")


if __name__ == "__main__":
    main()
