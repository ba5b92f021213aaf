"""models.pixels.resize_bicubic against Pillow's BICUBIC, and prepare_images against prepare_image."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from models.pixels import RESIZE_GROUP, prepare_image, prepare_images, resize_bicubic
from models.paths import DEFAULT_CATALOGUE_DIR

CATALOGUE = DEFAULT_CATALOGUE_DIR / "images"  # beside this checkout, or the one it was cloned from
SIZE = (192, 144)


def _pillow(arr: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(arr).resize((width, height), Image.Resampling.BICUBIC), dtype=np.uint8)


def _noise(h: int, w: int, seed: int) -> np.ndarray:
    """Smooth gradients plus noise: every value range, edges included."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = (yy * 255 // max(1, h - 1) + xx * 255 // max(1, w - 1)) // 2
    return np.clip(base[..., None] + rng.integers(-60, 61, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("src,dst", [
    ((80, 60), (192, 144)),  # a catalogue shot, enlarged 2.4x
    ((251, 333), (192, 144)),  # an odd size, shrunk in one direction, enlarged in the other
    ((700, 530), (192, 144)),  # shrunk 3.6x: the antialiasing kernel is wider
    ((192, 50), (192, 144)),  # only the horizontal pass
    ((41, 144), (192, 144)),  # only the vertical pass
    ((1, 1), (192, 144)),
])
def test_resize_matches_pillow_within_one_level(src, dst):
    arr = _noise(*src, seed=sum(src))
    ours, theirs = resize_bicubic(arr[None], *dst)[0], _pillow(arr, *dst)
    diff = np.abs(ours.astype(int) - theirs)
    assert ours.shape == theirs.shape == (*dst, 3) and ours.dtype == np.uint8
    assert diff.max() <= 1 and (diff > 0).mean() < 0.005, (diff.max(), (diff > 0).mean())


def test_a_stack_is_resized_image_by_image():
    stack = np.stack([_noise(80, 60, seed) for seed in range(5)])
    together = resize_bicubic(stack, *SIZE)
    for arr, out in zip(stack, together):
        np.testing.assert_array_equal(out, resize_bicubic(arr[None], *SIZE)[0])


@pytest.mark.skipif(not CATALOGUE.is_dir(), reason="catalogue images not present")
def test_catalogue_shots_differ_from_pillow_in_under_one_value_in_a_thousand():
    paths = sorted(CATALOGUE.glob("*.jpg"))[:64]
    arrs = [np.asarray(Image.open(p).convert("RGB")) for p in paths]
    arrs = [a for a in arrs if a.shape == (80, 60, 3)]
    ours = resize_bicubic(np.stack(arrs), *SIZE)
    theirs = np.stack([_pillow(a, *SIZE) for a in arrs])
    diff = np.abs(ours.astype(int) - theirs)
    assert diff.max() <= 1 and (diff > 0).mean() < 0.001


def test_prepare_images_equals_prepare_image_one_by_one_and_keeps_each_failure_in_its_place():
    class Unusable:  # decodable but unusable: prepare_image raises on it
        size = (10, 10)

    images = [Image.fromarray(_noise(80, 60, s)) for s in range(RESIZE_GROUP + 3)]  # more than one group
    images += [Image.fromarray(_noise(100, 100, 1)).convert("RGBA"), Image.fromarray(_noise(192, 144, 2))]
    images.insert(4, Unusable())
    out = prepare_images(images, SIZE)
    assert len(out) == len(images) and isinstance(out[4], Exception)
    for img, got in zip(images, out):
        if not isinstance(img, Unusable):
            np.testing.assert_array_equal(got, prepare_image(img, SIZE))
            assert got.shape == (*SIZE, 3) and got.dtype == np.uint8
