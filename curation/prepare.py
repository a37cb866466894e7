"""Decode, check, convert and resize one source image: the CPU work before scoring, for local dumps.

Sizes are read from the header first, so an image too small, too large, or too long to store is refused
before it is decoded (a 30000×30000 file never reaches memory); a truncated or non-image file fails the
full decode. What is stored is RGB JPEG with the short side at most `image_size` (downscale only, aspect
kept, no crop), with pixels as a viewer shows them:

- EXIF orientation is applied (the tag would be lost with the re-encode), so `original_width/height` are
  the displayed size; an EXIF block that cannot be parsed is ignored, as viewers ignore it.
- 16-bit images (I;16*) are scaled by 1/257, 32-bit integer ones (I) too when their values fit 16 bits
  and min-max otherwise; float images (F) by 255 when their values lie in [0, 1], min-max otherwise.
- Transparency (RGBA, LA, PA, a palette with a transparent index) is composited on white.
- A side longer than JPEG's 65,535 after resizing is `extreme_aspect`; a save that fails, `failed_to_encode`.
Any exception from decoding one file is that row's reason, never the job's end.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

Image.MAX_IMAGE_PIXELS = None  # we check the pixel count ourselves, before decoding, and count it

JPEG_MAX_SIDE = 65_535  # the JPEG format stores each side in 16 bits
ALPHA_MODES = ("RGBA", "LA", "PA", "RGBa", "La")


@dataclass(frozen=True)
class PrepareConfig:
    min_size: int = 512
    image_size: int = 512
    max_pixels: int = 100_000_000
    quality: int = 95


@dataclass
class Prepared:
    reason: str | None = None
    image: bytes | None = None
    width: int | None = None
    height: int | None = None
    original_width: int | None = None  # as displayed (EXIF orientation applied); as stored when not decoded
    original_height: int | None = None
    sha256: str | None = None
    stored_size: tuple[int, int] | None = None  # (width, height) in the file, before EXIF orientation


def target_size(width: int, height: int, side: int) -> tuple[int, int]:
    """Short side to `side` exactly (downscale only), the long side rounded."""
    if min(width, height) <= side:
        return width, height
    return (side, round(height * side / width)) if width <= height else (round(width * side / height), side)


def _scaled_to_8bit(im: Image.Image) -> Image.Image:
    """An L image from a 16-bit, 32-bit integer or float one, scaled (PIL's convert would clip to 255)."""
    a = np.asarray(im).astype(np.float32)  # float32: exact enough for 8 bits, half the memory of float64
    if im.mode == "F":
        finite = np.isfinite(a)
        a = np.where(finite, a, 0.0)  # NaN and inf carry no brightness we could show
        lo, hi = (a[finite].min(), a[finite].max()) if finite.any() else (0.0, 0.0)
        a = a * 255.0 if 0.0 <= lo and hi <= 1.0 else _min_max(a, lo, hi)
    elif 0 <= a.min() and a.max() <= 65_535:  # every I;16 image, and I images holding 16-bit values
        a = a / 257.0  # 65535 → 255
    else:
        a = _min_max(a, a.min(), a.max())
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")


def _min_max(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.full_like(a, min(max(lo, 0.0), 255.0))


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB, with transparency composited on white (as img2dataset does for web images)."""
    if im.mode in ("F", "I") or im.mode.startswith("I;16"):
        im = _scaled_to_8bit(im)
    if im.mode in ALPHA_MODES or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def _upright(im: Image.Image) -> Image.Image:
    """The pixels as a viewer shows them (EXIF orientation applied, the tag removed)."""
    try:
        return ImageOps.exif_transpose(im)
    except Exception:  # noqa: BLE001 - an unparsable EXIF block: viewers show the stored pixels, so do we
        return im


def prepare(data: bytes | None, config: PrepareConfig) -> Prepared:
    if data is None:
        return Prepared("missing_image")
    out = Prepared(sha256=hashlib.sha256(data).hexdigest())
    try:
        im = Image.open(io.BytesIO(data))
        out.stored_size = im.size
        out.original_width, out.original_height = im.size
        if im.width * im.height > config.max_pixels:
            out.reason = "too_large"
            return out
        if min(im.size) < config.min_size:
            out.reason = "too_small"
            return out
        if max(target_size(im.width, im.height, config.image_size)) > JPEG_MAX_SIDE:
            out.reason = "extreme_aspect"  # even resized, a side would not fit in a JPEG
            return out
        im.load()  # the full decode: a truncated file fails here
        im = to_rgb(_upright(im))
    except Exception:  # noqa: BLE001 - PIL's decoders raise many types on hostile bytes; each is this row's
        out.reason = "failed_to_decode"
        return out
    out.original_width, out.original_height = im.size
    size = target_size(im.width, im.height, config.image_size)
    buf = io.BytesIO()
    try:
        if size != im.size:
            im = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
        im.save(buf, "JPEG", quality=config.quality)
    except Exception:  # noqa: BLE001 - the encoder's limits (sizes, memory) are this row's, not the job's
        out.reason = "failed_to_encode"
        return out
    out.image, (out.width, out.height) = buf.getvalue(), im.size
    return out
