"""The one decode/resize path of training and serving: PIL and numpy only, so the image fetcher can
use it without importing keras.

:func:`prepare_image` (one image) and :func:`prepare_images` (a batch) are what both feed the image
model; :func:`draft_for` and :func:`shrink_for` are their first steps, exposed so the fetcher can size
its decode before loading the pixels; :func:`resize_bicubic` is their last.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import numpy as np
from PIL import Image, ImageOps

BACKGROUND = (255, 255, 255)
# The padded canvas may hold at most this many times the model's pixels. After shrink_for each side
# is under 2 * REDUCING_GAP times the model's (16x the pixels); 36 leaves room for rounding.
MAX_CANVAS_FACTOR = 36

# Shrinking keeps at least this many times the pixels the final resize needs in each direction
# (what Pillow's ``resize(reducing_gap=2)`` keeps), so a later bicubic resize still antialiases.
REDUCING_GAP = 2.0
# Modes Image.reduce averages correctly (P would average palette indices).
_REDUCIBLE = ("L", "LA", "RGB", "RGBA")


def _oriented_size(img: Image.Image) -> tuple[int, int]:
    """(width, height) after the EXIF rotation :func:`prepare_image` applies."""
    w, h = img.size
    try:
        orientation = img.getexif().get(0x0112, 1)
    except Exception:  # a broken EXIF block is ignored here as exif_transpose ignores it
        orientation = 1
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def _shrink_factor(img: Image.Image, size: tuple[int, int]) -> float:
    """How many times larger than needed the image is (1/scale of the fit into ``size``)."""
    height, width = size
    w, h = _oriented_size(img)
    return 1.0 / min(width / w, height / h)


def draft_for(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Ask a not-yet-loaded JPEG to decode at 1/2, 1/4 or 1/8 scale when the model needs fewer pixels.

    Why: a 20 MP camera JPEG feeding a 192x144 model would otherwise be decoded in full (~80 MB) to be
    thrown away; the DCT-domain reduction costs nothing and ``img.size`` tells the decode cost before
    :func:`shrink_for` loads it. Other formats and loaded images are returned unchanged.
    """
    if img.format in ("JPEG", "MPO") and getattr(img, "tile", None):
        keep = _shrink_factor(img, size) / REDUCING_GAP  # how far we may shrink and still keep the gap
        if keep >= 2:
            w, h = img.size
            img.draft(None, (max(1, int(w / keep)), max(1, int(h / keep))))
    return img


def shrink_for(img: Image.Image, size: tuple[int, int]) -> Image.Image:
    """Decode (JPEG at reduced scale) and box-reduce by an integer factor to ≥ REDUCING_GAP x the model size.

    Bounds every later step: the padded canvas of :func:`prepare_image` is then at most about
    (2 * REDUCING_GAP)^2 times the model's pixels whatever the source (a 20000x1 PNG used to pad to
    533 MP). Images already within the gap (every 60x80 catalogue shot) are returned untouched, so
    the model input for them is bit-identical to the full-size path.
    """
    img = draft_for(img, size)
    factor = int(_shrink_factor(img, size) / REDUCING_GAP)
    if factor < 2:
        return img
    img = eight_bit(img)  # before any convert("RGB"), which clips 16-bit values to white
    if img.mode not in _REDUCIBLE:
        transparent = img.mode in ("P", "PA") and ("transparency" in img.info or img.mode == "PA")
        img = img.convert("RGBA" if transparent or img.mode == "PA" else "RGB")
    return img.reduce(factor)


def eight_bit(img: Image.Image) -> Image.Image:
    """A 16- or 32-bit grayscale image ("I;16*", "I", e.g. a 16-bit PNG) as 8-bit "L", scaled down.
    Pillow's convert("RGB") clips such values at 255 instead: the photo became a blank white picture."""
    if not img.mode.startswith("I"):
        return img
    a = np.asarray(img)  # uint16 for "I;16*", int32 for "I": no wider copy of a large image
    if img.mode.startswith("I;16") or a.max(initial=0) > 255:
        a = a >> 8  # 16-bit range (an "I" image read from a 16-bit file holds 0..65535)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))  # 2-D uint8: mode "L"


def _padded(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """Every step of :func:`prepare_image` but the final resize: RGB uint8 at the model's aspect."""
    height, width = size
    img = eight_bit(ImageOps.exif_transpose(shrink_for(img, size)))
    if img.mode in ("RGBA", "LA", "P", "PA") and (img.mode != "P" or "transparency" in img.info):
        rgba = img.convert("RGBA")
        img = Image.new("RGB", rgba.size, BACKGROUND)
        img.paste(rgba, mask=rgba.getchannel("A"))
    img = img.convert("RGB")
    w, h = img.size
    if w * height != h * width:  # pad the short side so the aspect matches the target
        canvas_w, canvas_h = max(w, round(h * width / height)), max(h, round(w * height / width))
        if canvas_w * canvas_h > MAX_CANVAS_FACTOR * width * height:  # unreachable after shrink_for; a guard
            raise ValueError(f"padded canvas {canvas_w}x{canvas_h} exceeds the pixel cap")
        canvas = Image.new("RGB", (canvas_w, canvas_h), BACKGROUND)
        canvas.paste(img, ((canvas_w - w) // 2, (canvas_h - h) // 2))
        img = canvas
    return np.asarray(img, dtype=np.uint8)


def prepare_images(images: Sequence[Image.Image], size: tuple[int, int]) -> list[np.ndarray | Exception]:
    """:func:`prepare_image` for a batch: one entry per image, its array or the exception it raised.

    Images whose padded canvases share a shape (every 60x80 catalogue shot) are resized together,
    which costs less per image than one at a time.
    """
    height, width = size
    out: list[np.ndarray | Exception] = []
    to_resize: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        try:
            out.append(_padded(img, size))
        except Exception as exc:  # a decodable but unusable image: the caller falls back to text
            out.append(exc)
            continue
        if out[i].shape[:2] != (height, width):
            to_resize.setdefault(out[i].shape, []).append(i)
    for group in to_resize.values():
        for start in range(0, len(group), RESIZE_GROUP):
            part = group[start:start + RESIZE_GROUP]
            for i, resized in zip(part, resize_bicubic(np.stack([out[i] for i in part]), height, width)):
                out[i] = resized
    return out


def prepare_image(img: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """uint8 RGB array [H, W, 3] for ``size`` = (height, width).

    The image is padded with white to the target aspect ratio (centred) and then resized
    with bicubic filtering (antialiased when shrinking). Padding, not cropping: catalogue
    shots are 60x80 portraits whose garment often touches the frame (a crop cuts off
    hems and shoe tips), and both the catalogue and marketplace shots are products on
    white, so white padding adds nothing the model has not seen. Camera EXIF rotation is
    applied; transparency is composited onto white; grayscale/CMYK/palette become RGB.
    Images more than REDUCING_GAP times larger than needed are first shrunk by
    :func:`shrink_for` (JPEG draft, integer box reduction), which bounds the canvas built here.
    """
    (out,) = prepare_images([img], size)
    if isinstance(out, Exception):
        raise out
    return out


# Output rows (or columns) per band of resize_bicubic: each band reads only the inputs it needs.
RESIZE_BAND = 32
# Images resized in one call: larger stacks fall out of the CPU's caches and cost more per image.
RESIZE_GROUP = 16


def _bicubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic convolution kernel with a = -0.5, Pillow's BICUBIC filter (support 2)."""
    x = np.abs(x)
    return np.where(x < 1, ((a + 2) * x - (a + 3)) * x * x + 1,
                    np.where(x < 2, (((x - 5) * x + 8) * x - 4) * a, 0.0))


@lru_cache(maxsize=64)
def _bands(n_in: int, n_out: int) -> tuple[tuple[int, int, int, int, np.ndarray], ...]:
    """The resampling matrix n_in → n_out as bands (out0, out1, in0, in1, weights[out, in]).

    The weights are Pillow's (``precompute_coeffs`` in its Resample.c): a kernel centred on each
    output pixel's centre, widened by the scale when shrinking (antialiasing), cut at the edges and
    renormalised to sum to 1.
    """
    scale = n_in / n_out
    filter_scale = max(scale, 1.0)
    support = 2.0 * filter_scale
    weights = np.zeros((n_out, n_in))
    for o in range(n_out):
        centre = (o + 0.5) * scale
        lo, hi = max(int(centre - support + 0.5), 0), min(int(centre + support + 0.5), n_in)
        k = _bicubic((np.arange(lo, hi) - centre + 0.5) / filter_scale)
        weights[o, lo:hi] = k / k.sum()
    bands = []
    for o0 in range(0, n_out, RESIZE_BAND):
        rows = weights[o0:o0 + RESIZE_BAND]
        used = np.flatnonzero(rows.any(axis=0))
        i0, i1 = int(used[0]), int(used[-1]) + 1
        bands.append((o0, o0 + len(rows), i0, i1, np.ascontiguousarray(rows[:, i0:i1], dtype=np.float32)))
    return tuple(bands)


@lru_cache(maxsize=64)
def _column_bands(n_in: int, n_out: int, channels: int) -> tuple[tuple[int, int, int, int, np.ndarray], ...]:
    """:func:`_bands` for interleaved channels: a right-hand factor over (pixel, channel) columns."""
    eye = np.eye(channels, dtype=np.float32)
    return tuple((o0 * channels, o1 * channels, i0 * channels, i1 * channels, np.kron(w.T, eye))
                 for o0, o1, i0, i1, w in _bands(n_in, n_out))


def _to_8_bits(x: np.ndarray) -> np.ndarray:
    np.rint(x, out=x)
    return np.clip(x, 0, 255, out=x)


def resize_bicubic(stack: np.ndarray, height: int, width: int) -> np.ndarray:
    """uint8 [N, h, w, C] → uint8 [N, height, width, C]: Pillow's BICUBIC resize, as banded matrix products.

    Same weights and order as Pillow (the horizontal pass first, rounded to 8 bits before the
    vertical one); only the arithmetic differs (float32 here, 22-bit fixed point there), so a value
    is at most 1 level away from Pillow's (about 2 in 10,000 are, on catalogue images).

    Why not Pillow: its resize costs about 27 ns per output pixel on the 2-core benchmark machine,
    0.7 ms per 192x144 model input, CPU the model does not get; these products cost about a third.
    Every product is a small one (a band of one image), which numpy's BLAS runs on the calling thread.
    """
    n, h, w, c = stack.shape
    x = stack.reshape(n, h, w * c).astype(np.float32)
    if w != width:
        y = np.empty((n, h, width * c), np.float32)
        for o0, o1, i0, i1, weights in _column_bands(w, width, c):
            y[:, :, o0:o1] = x[:, :, i0:i1] @ weights
        x = _to_8_bits(y)
    if h != height:
        y = np.empty((n, height, width * c), np.float32)
        for o0, o1, i0, i1, weights in _bands(h, height):
            y[:, o0:o1] = weights @ x[:, i0:i1]
        x = _to_8_bits(y)
    return x.astype(np.uint8).reshape(n, height, width, c)
