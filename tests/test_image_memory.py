"""Bounded memory whatever the images: header checks, reduced-scale decoding, the pixel budget, the
bounded canvas, and the real service's peak RSS under hostile images.

Before these bounds a 138-byte 20000x1 PNG was padded to a 533 MP canvas, and a batch of 32 events
pointing at a 20 MP PNG was decoded at full size all at once (peak RSS 5.5 GB).
"""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest
from hostile_images import encoded, hostile_routes, peak_rss_bytes, start_hostile_server
from PIL import Image, ImageOps

from consumer.config import Settings
from consumer.images import PixelBudget, _Refused, decode_image
from models import pixels
from models.pixels import prepare_image, shrink_for

SIZE = (192, 144)  # the committed artifact's input (height, width)
CATALOGUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "fashion-product-images-small" / "images"
# Documented in the README: the service's peak RSS with the default settings, on CPU.
PEAK_RSS_BOUND = int(1.5 * 2**30)


@pytest.fixture(scope="module")
def routes():
    return hostile_routes()


def _reason(data: bytes, **kw) -> str:
    with pytest.raises(_Refused) as exc:
        decode_image(data, 40_000_000, 10.0, SIZE, **kw)
    return exc.value.reason


def test_thin_strip_is_refused_before_decoding(routes):
    assert _reason(routes["/strip.png"][1]) == "bad_aspect"
    assert _reason(routes["/bomb.png"][1]) == "decompression_bomb"


def test_formats_other_than_the_accepted_ones_are_not_parsed():
    img = Image.new("RGB", (40, 30), (10, 20, 30))
    for fmt in ("BMP", "TIFF", "TGA", "PPM"):
        assert _reason(encoded(img, fmt)) == "not_an_image", fmt
    for fmt in ("JPEG", "PNG", "WEBP", "GIF"):
        assert decode_image(encoded(img, fmt), 40_000_000, 10.0, SIZE).size == (40, 30), fmt


def test_big_jpeg_is_decoded_at_reduced_scale(routes):
    budget = PixelBudget(40_000_000)
    img = decode_image(routes["/20mp.jpg"][1], 40_000_000, 10.0, SIZE, budget=budget)
    assert budget.peak <= 20_000_000 // 16  # the JPEG decoder itself ran at 1/4 scale or less
    assert img.mode == "RGB" and max(img.size) < 4 * 192  # and what is kept is a few times the model size


def test_big_png_is_reduced_right_after_decoding(routes):
    img = decode_image(routes["/20mp.png"][1], 40_000_000, 10.0, SIZE)
    assert img.mode == "RGB" and img.size[0] < 4 * 144 and img.size[1] < 4 * 192
    assert img.getpixel((img.size[0] // 2, img.size[1] // 2)) == (200, 30, 40)


def test_pixel_budget_limits_pixels_decoded_at_once(routes):
    budget = PixelBudget(45_000_000)  # room for two 20 MP decodes, not three
    data = routes["/20mp.png"][1]
    out: list = []
    threads = [threading.Thread(target=lambda: out.append(decode_image(data, 40_000_000, 10.0, SIZE, budget=budget)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(out) == 4 and budget.in_use == 0
    assert 20_000_000 <= budget.peak <= 45_000_000


def test_budget_wait_ends_at_the_deadline_and_on_cancel():
    budget = PixelBudget(10)
    held = budget.acquire(10, None)
    with pytest.raises(_Refused, match="timeout"):
        budget.acquire(5, time.monotonic() + 0.05)
    threading.Timer(0.05, budget.cancel).start()
    with pytest.raises(_Refused, match="cancelled"):
        budget.acquire(5, None)
    budget.release(held)
    assert budget.acquire(10**9, None) == 10  # clamped: a request never needs more than the whole budget


def test_padding_a_strip_builds_a_small_canvas(monkeypatch):
    made: list = []
    real_new = Image.new
    monkeypatch.setattr(pixels.Image, "new", lambda mode, size, *a: made.append(size) or real_new(mode, size, *a))
    out = prepare_image(Image.new("RGB", (20000, 1), (0, 0, 0)), SIZE)  # the training path has no aspect check
    assert out.shape == (192, 144, 3)
    assert made and all(w * h <= 16 * 192 * 144 for w, h in made)  # was 20000 x 26667 = 533 MP


def _full_size_reference(img: Image.Image, size) -> np.ndarray:
    """prepare_image as it was before shrinking existed (full-size pad, then one bicubic resize)."""
    height, width = size
    img = ImageOps.exif_transpose(img).convert("RGB")
    w, h = img.size
    if w * height != h * width:
        cw, ch = max(w, round(h * width / height)), max(h, round(w * height / width))
        canvas = Image.new("RGB", (cw, ch), (255, 255, 255))
        canvas.paste(img, ((cw - w) // 2, (ch - h) // 2))
        img = canvas
    return np.asarray(img.resize((width, height), Image.Resampling.BICUBIC), dtype=np.uint8)


@pytest.mark.skipif(not CATALOGUE.is_dir(), reason="catalogue images not present")
def test_catalogue_images_reach_the_model_unchanged():
    paths = sorted(CATALOGUE.glob("*.jpg"))[:200]
    for p in paths:
        with Image.open(p) as img:
            assert shrink_for(img, SIZE) is img  # never shrunk: within REDUCING_GAP of the model size
            np.testing.assert_array_equal(prepare_image(img, SIZE), _full_size_reference(Image.open(p), SIZE))


def test_serving_and_training_paths_agree_on_big_images(routes):
    """The fetcher's reduced decode then prepare_image == prepare_image on the file (training's path)."""
    for path in ("/20mp.jpg", "/20mp.png"):
        data = routes[path][1]
        served = prepare_image(decode_image(data, 40_000_000, 10.0, SIZE), SIZE)
        trained = prepare_image(Image.open(io.BytesIO(data)), SIZE)
        np.testing.assert_array_equal(served, trained)


# --- the real service under hostile images -----------------------------------------------------

HOSTILE = ["/strip.png"] + ["/20mp.png"] * 32 + ["/bomb.png", "/39mp.png"] + ["/20mp.jpg"] * 3


@pytest.mark.kafka
@pytest.mark.slow
@pytest.mark.timeout(420)
def test_service_peak_rss_stays_under_the_documented_bound(kafka_bootstrap, topic_factory):
    from confluent_kafka import Consumer

    from consumer.sample import publish
    from schemas import CategoryAssigned, ProductEvent
    from schemas.wire import make_codec

    srv, base = start_hostile_server()
    s = Settings(bootstrap_servers=kafka_bootstrap, group_id=f"shelver-test-{uuid.uuid4().hex[:8]}",
                 input_topic=topic_factory(1, "in"), replay_topic=None, output_topic=topic_factory(1, "out"),
                 dlq_topic=topic_factory(1, "dlq"))
    now = datetime.now(timezone.utc)
    publish(s, [ProductEvent(product_id=f"h{i}", title="Red summer dress", image_url=base + path, event_time=now)
                for i, path in enumerate(HOSTILE)])
    env = {**os.environ, "SHELVER_LOG_LEVEL": "WARNING", "SHELVER_IMAGE_ALLOWED_HOSTS": '["127.0.0.1"]',
           "SHELVER_REPLAY_TOPIC": ""}
    for name in ("bootstrap_servers", "group_id", "input_topic", "output_topic", "dlq_topic"):
        env[f"SHELVER_{name.upper()}"] = str(getattr(s, name))
    proc = subprocess.Popen([sys.executable, "-m", "consumer.cli", "consume"], env=env)  # the real model
    codec = make_codec(None, {})
    reader = Consumer({"bootstrap.servers": s.bootstrap_servers, "group.id": uuid.uuid4().hex,
                       "auto.offset.reset": "earliest"})
    reader.subscribe([s.output_topic])
    out: list[CategoryAssigned] = []
    try:
        deadline = time.monotonic() + 300
        while len(out) < len(HOSTILE) and time.monotonic() < deadline and proc.poll() is None:
            for m in reader.consume(100, 0.5):
                assert not m.error(), m.error()
                out.append(CategoryAssigned.from_avro(codec.decode(m.value(), "category_assigned", s.output_topic)))
        assert proc.poll() is None, "the service died"
        peak = peak_rss_bytes(proc.pid)  # the whole run's peak, read while the process is alive
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
    finally:
        proc.kill()
        proc.wait()
        reader.close()
        srv.shutdown()
        srv.server_close()
    print(f"peak RSS {peak / 2**30:.2f} GiB")
    assert len(out) == len(HOSTILE)
    by_id = {r.product_id: r for r in out}
    errors = {path: by_id[f"h{i}"].image_error for i, path in enumerate(HOSTILE)}
    assert errors["/strip.png"] == "bad_aspect" and errors["/bomb.png"] == "decompression_bomb"
    big = [by_id[f"h{i}"] for i, p in enumerate(HOSTILE) if p in ("/20mp.png", "/20mp.jpg", "/39mp.png")]
    assert all(r.image_used for r in big), sorted({r.image_error for r in big if not r.image_used})
    assert peak < PEAK_RSS_BOUND, f"peak RSS {peak / 2**30:.2f} GiB"
