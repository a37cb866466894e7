"""Decode, check, convert and resize one source image: the CPU work before scoring, for local dumps.

Sizes are read from the header first, so an image too small or too large is refused before it is decoded
(a 30000×30000 file never reaches memory); a truncated or non-image file fails the full decode. What is
stored is RGB JPEG with the short side at most `image_size` (downscale only, aspect kept, no crop).
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass

from PIL import Image

Image.MAX_IMAGE_PIXELS = None  # we check the pixel count ourselves, before decoding, and count it


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
    original_width: int | None = None
    original_height: int | None = None
    sha256: str | None = None


def to_rgb(im: Image.Image) -> Image.Image:
    """RGB, with transparency composited on white (as img2dataset does for web images)."""
    if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def prepare(data: bytes | None, config: PrepareConfig) -> Prepared:
    if data is None:
        return Prepared("missing_image")
    out = Prepared(sha256=hashlib.sha256(data).hexdigest())
    try:
        im = Image.open(io.BytesIO(data))
        out.original_width, out.original_height = im.size
        if im.width * im.height > config.max_pixels:
            out.reason = "too_large"
            return out
        if min(im.size) < config.min_size:
            out.reason = "too_small"
            return out
        im.load()  # the full decode: a truncated file fails here
        im = to_rgb(im)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        out.reason = "failed_to_decode"
        return out
    w, h, side = im.width, im.height, config.image_size
    if min(w, h) > side:  # short side to `side`, exactly; the long side rounded
        size = (side, round(h * side / w)) if w <= h else (round(w * side / h), side)
        im = im.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=config.quality)
    out.image, (out.width, out.height) = buf.getvalue(), im.size
    return out
