"""Web metadata fixtures: one row per filter bound and per download failure, in each column variant,
with the images served from 127.0.0.1."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
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


def _jpeg_truncated() -> bytes:
    data = encode(synthetic_image(800, 600, seed=7))
    return data[: len(data) // 2]


GOOD = dict(aesthetic=6.0, watermark=0.1, unsafe=0.1)
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
    Case("html", 800, 600, caption="html page", expect="failed_to_resize", **GOOD),
    Case("truncated", 800, 600, caption="truncated jpeg", expect="failed_to_resize", **GOOD),
    Case("empty", 800, 600, caption="empty body", expect="failed_to_resize", **GOOD),
    Case("shrunk", 1024, 768, caption="smaller than it says", expect="too_small_after_download", **GOOD),
    Case("opted_out", 800, 600, caption="noai header", expect="opted_out", **GOOD),
    Case("big_again", 1200, 900, caption="same url as big", expect="duplicate_url", path="/big", **GOOD),
    Case("no_url", 800, 600, caption="no url", expect="url_missing", path="", **GOOD),
]


def routes() -> dict[str, Route]:
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
        "/opted_out": Route(rgb(800, 600, 9), headers=(("X-Robots-Tag", "noai"),)),
        # rows dropped by the filter have images too: the filter, not the server, must stop them
        **{f"/{c.name}": Route(rgb(800, 600, 10 + i)) for i, c in enumerate(CASES)
           if c.expect in ("too_small", "aesthetic_too_low", "watermark_too_high", "unsafe_too_high",
                           "aesthetic_missing", "watermark_missing", "unsafe_missing", "size_missing")},
    }


def case_url(base_url: str, case: Case) -> str | None:
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
