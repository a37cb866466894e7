"""PixArt's aspect-ratio buckets (issue 15 item 2, the encoder half): an image goes to the bin of its
resolution's table whose height/width ratio is nearest its own, is resized (bicubic) to cover the bin and
center-cropped to it, as PixArt-α's multi-scale dataset does. The tables and the nearest-ratio rule are
diffusers' own (PixArtAlphaPipeline bins a requested size with them), so a size binned at sampling time lands
on a bucket the model was trained on.

A bucket's id is its place in the table sorted by ratio: stable for a resolution, small enough for an int16.
Used by lumos-encode --buckets pixart (pipeline/encoders/latents.py) and by bucketed sampling.
"""

from __future__ import annotations

from functools import lru_cache

from PIL import Image

from lumos.floor.errors import UserError


def _table(resolution: int) -> dict:
    """diffusers' PixArt table for `resolution`: {"ratio": [height, width]}."""
    from diffusers.pipelines.pixart_alpha import pipeline_pixart_alpha as pixart

    tables = {256: pixart.ASPECT_RATIO_256_BIN, 512: pixart.ASPECT_RATIO_512_BIN, 1024: pixart.ASPECT_RATIO_1024_BIN}
    if resolution not in tables:
        raise UserError(f"--buckets pixart: PixArt has bins for 256, 512 and 1024 px, not {resolution}")
    return tables[resolution]


@lru_cache(maxsize=None)
def bins(resolution: int) -> tuple[tuple[float, int, int], ...]:
    """(ratio, height, width) of each bin of PixArt's table for `resolution` (256, 512 or 1024), by ratio."""
    return tuple(sorted((float(r), int(h), int(w)) for r, (h, w) in _table(resolution).items()))


def bucket_of(width: int, height: int, resolution: int) -> int:
    """The id of the bin nearest the image's height/width ratio (diffusers' classify_height_width_bin rule:
    the first of equally near bins in table order)."""
    table = _table(resolution)
    nearest = float(min(table, key=lambda r: abs(float(r) - height / width)))
    return next(i for i, (r, _, _) in enumerate(bins(resolution)) if r == nearest)


def fit_to_bucket(image: Image.Image, resolution: int) -> tuple[int, Image.Image]:
    """(bucket id, the image resized to cover that bin and center-cropped to its height × width)."""
    bucket = bucket_of(image.width, image.height, resolution)
    _, h, w = bins(resolution)[bucket]
    scale = max(h / image.height, w / image.width)
    size = (max(w, round(image.width * scale)), max(h, round(image.height * scale)))
    resized = image.convert("RGB").resize(size, Image.BICUBIC)
    left, top = (size[0] - w) // 2, (size[1] - h) // 2
    return bucket, resized.crop((left, top, left + w, top + h))
