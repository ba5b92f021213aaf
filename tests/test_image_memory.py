"""Bounded memory whatever the images: header checks, reduced-scale decoding, the pixel budget and
the bounded canvas (the real service's peak RSS: tests/test_service_memory.py).

Before these bounds a 138-byte 20000x1 PNG was padded to a 533 MP canvas, and a batch of 32 events
pointing at a 20 MP PNG was decoded at full size all at once (peak RSS 5.5 GB).
"""
from __future__ import annotations

import io
import threading
import time

import numpy as np
import pytest
from hostile_images import encoded, hostile_routes
from PIL import Image, ImageOps

from consumer.adapters.images import PixelBudget, _Refused, decode_image
from models import pixels
from models.pixels import prepare_image, resize_bicubic, shrink_for
from models.paths import DEFAULT_CATALOGUE_DIR

SIZE = (192, 144)  # the committed artifact's input (height, width)
CATALOGUE = DEFAULT_CATALOGUE_DIR / "images"  # beside this checkout, or the one it was cloned from


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


@pytest.mark.parametrize("height, width", [(48, 64), (800, 600)])  # small, and large enough to be shrunk first
def test_a_16_bit_grayscale_png_is_scaled_to_8_bits_not_clipped_to_white(height, width):
    # Before: Pillow's convert("RGB") clipped every value over 255, and the model saw a blank white image.
    ramp = np.linspace(0, 65535, height * width).reshape(height, width).astype(np.uint16)
    data = encoded(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    decoded = np.asarray(decode_image(data, 40_000_000, 10.0, SIZE))
    assert decoded.min() < 5 and decoded.max() > 250 and 120 < decoded.mean() < 135  # the ramp, not white
    prepared = prepare_image(Image.open(io.BytesIO(data)), SIZE).astype(float)
    as_8_bits = prepare_image(Image.fromarray((ramp >> 8).astype(np.uint8)), SIZE).astype(float)
    assert np.abs(prepared - as_8_bits).mean() < 2  # what the same picture saved with 8 bits gives


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
    """prepare_image as it was before shrinking existed (full-size pad, then one bicubic resize: the
    same resize_bicubic, whose agreement with Pillow tests/test_resize.py checks)."""
    height, width = size
    img = ImageOps.exif_transpose(img).convert("RGB")
    w, h = img.size
    if w * height != h * width:
        cw, ch = max(w, round(h * width / height)), max(h, round(w * height / width))
        canvas = Image.new("RGB", (cw, ch), (255, 255, 255))
        canvas.paste(img, ((cw - w) // 2, (ch - h) // 2))
        img = canvas
    return resize_bicubic(np.asarray(img, dtype=np.uint8)[None], height, width)[0]


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
