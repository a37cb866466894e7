"""Web metadata fixtures: one row per filter bound and per download failure, in each column variant,
with the images served from 127.0.0.1."""

from __future__ import annotations

import functools
import io
import math
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from lumos.curation.sample import Route, encode, synthetic_image


@dataclass(frozen=True)
class Case:
    name: str
    width: int | None
    height: int | None
    aesthetic: float | None
    watermark: float | None
    unsafe: float | None
    caption: str | None
    expect: str | None  # drop reason, or None when the row must be kept
    path: str | None = None  # URL path; defaults to /<name>
    url: str | None = None  # a whole URL instead of one on the test server (hostile schemes and hosts)
    stored: tuple[int, int] | None = None  # kept rows: the stored (width, height), when the case pins it
    original: tuple[int, int] | None = None  # kept rows: original (width, height) as a viewer shows it
    pixels: tuple = ()  # kept rows: ((x, y) as fractions of the stored size, (r, g, b)) a viewer shows there


def _jpeg_truncated() -> bytes:
    data = encode(synthetic_image(800, 600, seed=7))
    return data[: len(data) // 2]


GOOD = dict(aesthetic=6.0, watermark=0.1, unsafe=0.1)
MAX_PIXELS = 12_500_000  # the pixel cap the web tests download with: "wide" (20000×600) is under it, "huge" over
RED, BLUE, GREEN, WHITE = (220, 20, 20), (20, 20, 200), (20, 160, 20), (255, 255, 255)
CASES = [
    Case("at_bounds", 512, 512, 5.0, 0.5, 0.5, "exactly at every bound", None),
    Case("big", 1200, 900, caption="a large photo", expect=None, **GOOD),
    Case("no_caption", 800, 600, caption=None, expect=None, **GOOD),
    Case("gray", 600, 800, caption="grayscale", expect=None, **GOOD),
    Case("cmyk", 640, 640, caption="cmyk jpeg", expect=None, **GOOD),
    Case("rgba", 700, 560, caption="rgba png", expect=None, **GOOD),
    Case("narrow", 511, 900, caption="one pixel short", expect="too_small", **GOOD),
    Case("aesthetic_past", 800, 600, 4.99, 0.1, 0.1, "dull", "aesthetic_too_low"),
    Case("watermark_past", 800, 600, 6.0, 0.51, 0.1, "stock", "watermark_too_high"),
    Case("unsafe_past", 800, 600, 6.0, 0.1, 0.5001, "nsfw", "unsafe_too_high"),
    Case("aesthetic_nan", 800, 600, math.nan, 0.1, 0.1, "nan score", "aesthetic_missing"),
    Case("aesthetic_null", 800, 600, None, 0.1, 0.1, "null score", "aesthetic_missing"),
    Case("watermark_null", 800, 600, 6.0, None, 0.1, "null watermark", "watermark_missing"),
    Case("unsafe_nan", 800, 600, 6.0, 0.1, math.nan, "nan unsafe", "unsafe_missing"),
    Case("width_null", None, 600, caption="no width", expect="size_missing", **GOOD),
    Case("gone", 800, 600, caption="404", expect="failed_to_download", **GOOD),
    Case("html", 800, 600, caption="html page", expect="failed_to_decode", **GOOD),
    Case("truncated", 800, 600, caption="truncated jpeg", expect="failed_to_decode", **GOOD),
    Case("empty", 800, 600, caption="empty body", expect="failed_to_decode", **GOOD),
    Case("shrunk", 1024, 768, caption="smaller than it says", expect="too_small_after_download", **GOOD),
    Case("huge", 3600, 3500, caption="past the pixel cap", expect="too_large", **GOOD),
    # stored 800×600 with EXIF orientation 6 (rotate 90° clockwise to show): a 600×800 portrait whose red
    # corner, stored top-left, shows top-right
    Case("exif_rotated", 800, 600, caption="portrait phone photo", expect=None, stored=(512, 683),
         original=(600, 800), pixels=(((0.95, 0.05), RED), ((0.05, 0.05), BLUE), ((0.95, 0.95), BLUE)), **GOOD),
    # 16-bit gray PNG, 64·257 left and 191·257 right: scaled by 1/257 (clipping gave white, min-max 0/255)
    Case("gray16", 640, 640, caption="16-bit png", expect=None, stored=(512, 512), original=(640, 640),
         pixels=(((0.25, 0.5), (64,) * 3), ((0.75, 0.5), (191,) * 3)), **GOOD),
    # 32-bit float TIFF in [0, 1], 0.25 left and 0.75 right: scaled by 255
    Case("float_tiff", 600, 600, caption="float tiff", expect=None, stored=(512, 512), original=(600, 600),
         pixels=(((0.25, 0.5), (64,) * 3), ((0.75, 0.5), (191,) * 3)), **GOOD),
    # palette PNG whose left half is the transparent index (black in the palette): composited on white
    Case("palette_alpha", 600, 600, caption="palette png", expect=None, stored=(512, 512), original=(600, 600),
         pixels=(((0.25, 0.5), WHITE), ((0.75, 0.5), RED)), **GOOD),
    # a 20000×600 panorama (aspect 33): kept, resized to a short side of 512
    Case("wide", 20000, 600, caption="panorama", expect=None, stored=(17067, 512), original=(20000, 600),
         pixels=(((0.1, 0.5), GREEN), ((0.9, 0.5), BLUE)), **GOOD),
    # a 70000×16 strip (the metadata says 800×600): no JPEG holds a side over 65535, so it is counted
    Case("too_wide", 800, 600, caption="a strip", expect="extreme_aspect", **GOOD),
    Case("opted_out", 800, 600, caption="noai header", expect="opted_out", **GOOD),
    Case("big_again", 1200, 900, caption="same url as big", expect="duplicate_url", path="/big", **GOOD),
    Case("no_url", 800, 600, caption="no url", expect="url_missing", path="", **GOOD),
]


def _halves(width: int, height: int, left, right, dtype=np.uint8) -> np.ndarray:
    """An array whose left half is `left` and right half `right` (scalars or RGB triples)."""
    a = np.empty((height, width) + np.shape(left), dtype)
    a[:, : width // 2], a[:, width // 2 :] = left, right
    return a


def _exif_rotated() -> bytes:
    im = Image.new("RGB", (800, 600), BLUE)
    im.paste(RED, (0, 0, 160, 160))  # the stored top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to show
    out = io.BytesIO()
    im.save(out, "JPEG", quality=95, exif=exif.tobytes())
    return out.getvalue()


def _palette_alpha() -> bytes:
    im = Image.fromarray(_halves(600, 600, 0, 1), "P")
    im.putpalette([0, 0, 0, *RED])
    out = io.BytesIO()
    im.save(out, "PNG", transparency=0)
    return out.getvalue()


def routes() -> dict[str, Route]:
    return dict(_routes())  # a copy: callers may change theirs


@functools.cache  # built once per process: several tests compare against the served bytes
def _routes() -> dict[str, Route]:
    rgb = lambda w, h, seed: encode(synthetic_image(w, h, seed))  # noqa: E731
    return {
        "/at_bounds": Route(rgb(512, 640, 1)),
        "/big": Route(rgb(1200, 900, 2)),
        "/no_caption": Route(rgb(800, 600, 3)),
        "/gray": Route(encode(synthetic_image(600, 800, 4, mode="L"))),
        "/cmyk": Route(encode(synthetic_image(640, 640, 5, mode="CMYK"))),
        "/rgba": Route(encode(synthetic_image(700, 560, 6, mode="RGBA"), "PNG"), "image/png"),
        "/html": Route(b"<!doctype html><html><body>Moved</body></html>", "image/jpeg"),
        "/truncated": Route(_jpeg_truncated()),
        "/empty": Route(b""),
        "/shrunk": Route(rgb(400, 300, 8)),
        "/huge": Route(encode(Image.new("RGB", (3600, 3500), GREEN), "PNG"), "image/png"),  # never decoded
        "/exif_rotated": Route(_exif_rotated()),
        "/gray16": Route(encode(Image.fromarray(_halves(640, 640, 64 * 257, 191 * 257, np.uint16)), "PNG"),
                         "image/png"),
        "/float_tiff": Route(encode(Image.fromarray(_halves(600, 600, 0.25, 0.75, np.float32), "F"), "TIFF"),
                             "image/tiff"),
        "/palette_alpha": Route(_palette_alpha(), "image/png"),
        "/wide": Route(encode(Image.fromarray(_halves(20000, 600, GREEN, BLUE), "RGB"))),
        "/too_wide": Route(encode(Image.new("RGB", (70000, 16), BLUE), "PNG"), "image/png"),
        "/opted_out": Route(rgb(800, 600, 9), headers=(("X-Robots-Tag", "noai"),)),
        # rows dropped by the filter have images too: the filter, not the server, must stop them
        **{f"/{c.name}": Route(rgb(800, 600, 10 + i)) for i, c in enumerate(CASES)
           if c.expect in ("too_small", "aesthetic_too_low", "watermark_too_high", "unsafe_too_high",
                           "aesthetic_missing", "watermark_missing", "unsafe_missing", "size_missing")},
    }


def case_url(base_url: str, case: Case) -> str | None:
    if case.url is not None:
        return case.url
    path = f"/{case.name}" if case.path is None else case.path
    return f"{base_url}{path}" if path else None


# Physical column names of each variant: url, caption, width, height, aesthetic, watermark, unsafe.
VARIANTS = {
    "laion-upper": ("laion", ("URL", "TEXT", "WIDTH", "HEIGHT", "AESTHETIC_SCORE", "pwatermark", "punsafe")),
    "laion-lower": ("laion", ("url", "text", "width", "height", "aesthetic", "pwatermark", "punsafe")),
    "coyo": ("coyo", ("url", "text", "width", "height", "aesthetic_score_laion_v2", "watermark_score",
                      "nsfw_score_opennsfw2")),
}


def write_metadata(path: str, variant: str, base_url: str, cases=CASES) -> str:
    url, caption, width, height, aesthetic, watermark, unsafe = VARIANTS[variant][1]
    columns = {
        url: [case_url(base_url, c) for c in cases],
        caption: [c.caption for c in cases],
        width: pa.array([c.width for c in cases], pa.int64()),
        height: pa.array([c.height for c in cases], pa.int64()),
        aesthetic: pa.array([c.aesthetic for c in cases], pa.float32()),
        watermark: pa.array([c.watermark for c in cases], pa.float32()),
        unsafe: pa.array([c.unsafe for c in cases], pa.float32()),
        "similarity": pa.array([0.3] * len(cases), pa.float64()),
    }
    if VARIANTS[variant][0] == "coyo":
        columns = {"id": pa.array(range(len(cases)), pa.int64()), **columns,
                   "image_phash": ["00ff"] * len(cases), "nsfw_score_gantman": [0.0] * len(cases)}
    pq.write_table(pa.table(columns), path)
    return path
