"""The web path decodes as the dumps do: img2dataset fetches, `prepare()` (prepare.py) decodes.

img2dataset's own Resizer decodes with OpenCV: it ignores EXIF orientation, turns 16-bit and float images
white or black, and checks `max_image_area` only after the full decode. `LumosDownloader` stands in for
img2dataset's `Downloader` (same arguments; swapped into `img2dataset.main` by download.py) and replaces
the Resizer it is handed with `PreparedResizer`, built from that Resizer's `image_size` and
`max_image_area`: the header is checked before decoding (`too_large`, `extreme_aspect`), then the pixels are
made upright, scaled to 8 bits, composited on white and stored as RGB JPEG, short side <= image_size.
Both classes are pickled by reference to this module, so each spawned or Ray worker imports them.

A refused image is img2dataset's `failed_to_resize` with an error message of DECODE_MARKER + the reason;
`decode_reason` turns it back into that reason (too_large, extreme_aspect, failed_to_decode,
failed_to_encode). The size check against --min-size stays in ingest (too_small_after_download).
"""

from __future__ import annotations

import math

from lumos.curation.prepare import PrepareConfig, prepare

DECODE_MARKER = "[lumos decode]"


class PreparedResizer:
    """img2dataset's resizer interface: (img_stream, bbox_list) -> (jpeg, width, height, original_width,
    original_height, error_message)."""

    def __init__(self, image_size: int, max_pixels: int):
        # min_size 0: a small image is counted by ingest, under its own reason
        self.config = PrepareConfig(min_size=0, image_size=image_size, max_pixels=max_pixels)

    def __call__(self, img_stream, blurring_bbox_list=None):
        try:
            img_stream.seek(0)
            out = prepare(img_stream.read(), self.config)
        except Exception:  # noqa: BLE001 - img2dataset drops a row whose resizer raises, uncounted: never raise
            return None, None, None, None, None, f"{DECODE_MARKER} failed_to_decode"
        if out.reason is not None:
            return None, None, None, None, None, f"{DECODE_MARKER} {out.reason}"
        return out.image, out.width, out.height, out.original_width, out.original_height, None


def decode_reason(error_message: str | None) -> str | None:
    """The drop reason of a row `PreparedResizer` refused (img2dataset's error text), else None."""
    if error_message and error_message.startswith(DECODE_MARKER):
        return error_message[len(DECODE_MARKER):].strip() or "failed_to_decode"
    return None


class LumosDownloader:
    """Takes the place of img2dataset's `Downloader` (same arguments), with `PreparedResizer` as its resizer."""

    def __init__(self, *args, **kwargs):
        from img2dataset.downloader import Downloader

        self.downloader = Downloader(*args, **kwargs)
        given = self.downloader.resizer  # img2dataset's Resizer, built from download.py's arguments
        area = given.max_image_area  # img2dataset's default is float("inf"): no cap
        self.downloader.resizer = PreparedResizer(
            image_size=int(given.image_size),
            max_pixels=int(area) if math.isfinite(area) else PrepareConfig.max_pixels,
        )

    def __call__(self, row):
        return self.downloader(row)
