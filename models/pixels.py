"""The one decode/resize path of training and serving: PIL only, so the image fetcher can use it
without importing keras.

:func:`prepare_image` is what both feed the image model; :func:`draft_for` and :func:`shrink_for`
are its first steps, exposed so the fetcher can size its decode before loading the pixels.
"""

from __future__ import annotations

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
    if img.mode not in _REDUCIBLE:
        transparent = img.mode in ("P", "PA") and ("transparency" in img.info or img.mode == "PA")
        img = img.convert("RGBA" if transparent or img.mode == "PA" else "RGB")
    return img.reduce(factor)


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
    height, width = size
    img = ImageOps.exif_transpose(shrink_for(img, size))
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
    if img.size != (width, height):
        img = img.resize((width, height), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.uint8)
