"""Column names of web metadata (LAION, COYO), of our filtered metadata, and of img2dataset's output."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from lumos.schemas import images

# Logical fields of a metadata row; each source names them its own way.
URL = "url"
CAPTION = "caption"
WIDTH = "width"
HEIGHT = "height"
AESTHETIC = "aesthetic"
WATERMARK = "watermark"
UNSAFE = "unsafe"
LOGICAL_FIELDS = (URL, CAPTION, WIDTH, HEIGHT, AESTHETIC, WATERMARK, UNSAFE)
REQUIRED_FIELDS = (URL, WIDTH, HEIGHT)

# Candidate physical names per source, in the order they are tried.
CANDIDATES = {
    "laion": {
        # 2B-en: URL, TEXT, WIDTH, HEIGHT, similarity; improved_aesthetics_*plus adds AESTHETIC_SCORE,
        # pwatermark, punsafe; newer releases use lower case.
        URL: ("URL", "url"),
        CAPTION: ("TEXT", "text", "caption"),
        WIDTH: ("WIDTH", "width"),
        HEIGHT: ("HEIGHT", "height"),
        AESTHETIC: ("AESTHETIC_SCORE", "aesthetic_score", "aesthetic"),
        WATERMARK: ("pwatermark", "PWATERMARK"),
        UNSAFE: ("punsafe", "PUNSAFE"),
    },
    "coyo": {
        URL: ("url",),
        CAPTION: ("text",),
        WIDTH: ("width",),
        HEIGHT: ("height",),
        AESTHETIC: ("aesthetic_score_laion_v2",),
        WATERMARK: ("watermark_score",),
        UNSAFE: ("nsfw_score_opennsfw2",),
    },
}
WEB_SOURCES = tuple(CANDIDATES)


class MissingColumn(ValueError):
    pass


@dataclass(frozen=True)
class ColumnMap:
    """Which physical column of a metadata file holds each logical field (None: the file has none)."""

    source: str
    physical: dict[str, str | None]

    def has(self, field: str) -> bool:
        return self.physical.get(field) is not None

    @property
    def columns(self) -> list[str]:
        return [name for name in self.physical.values() if name is not None]

    @property
    def variant(self) -> str:
        return "upper-case" if self.physical[URL] == "URL" else "lower-case"


def detect(source: str, names: list[str]) -> ColumnMap:
    """Map the logical fields of `source` onto the columns of a file; MissingColumn names what lacks."""
    present = set(names)
    physical = {}
    for field, candidates in CANDIDATES[source].items():
        physical[field] = next((c for c in candidates if c in present), None)
        if physical[field] is None and field in REQUIRED_FIELDS:
            raise MissingColumn(
                f"{source} metadata has no {field} column (looked for {', '.join(candidates)}); "
                f"its columns are: {', '.join(names)}"
            )
    return ColumnMap(source, physical)


# The filtered metadata that the filter stage writes and img2dataset reads. img2dataset reserves `url`,
# `caption`, `width`, `height`, `key`, ... so everything we carry through it is prefixed.
KEPT_URL = "url"
KEPT_ID = "meta_id"
KEPT_COLUMNS = {
    CAPTION: "meta_caption",
    WIDTH: "meta_width",
    HEIGHT: "meta_height",
    AESTHETIC: "meta_aesthetic",
    WATERMARK: "meta_watermark",
    UNSAFE: "meta_unsafe",
}
KEPT_SCHEMA = pa.schema(
    [
        pa.field(KEPT_URL, pa.string()),
        pa.field(KEPT_ID, pa.string()),
        pa.field(KEPT_COLUMNS[CAPTION], pa.string()),
        pa.field(KEPT_COLUMNS[WIDTH], pa.int64()),
        pa.field(KEPT_COLUMNS[HEIGHT], pa.int64()),
        pa.field(KEPT_COLUMNS[AESTHETIC], pa.float32()),
        pa.field(KEPT_COLUMNS[WATERMARK], pa.float32()),
        pa.field(KEPT_COLUMNS[UNSAFE], pa.float32()),
    ]
)
# Each filtered block also carries one tally row per drop reason, so the counts travel with the data
# and are exactly-once whatever Ray retries. Kept rows have a null reason.
DROP_REASON = images.DROP_REASON
DROP_COUNT = "drop_count"
FILTERED_SCHEMA = KEPT_SCHEMA.append(pa.field(DROP_REASON, pa.string())).append(pa.field(DROP_COUNT, pa.int64()))

# img2dataset's parquet output (output_format="parquet", encode_format="jpg").
I2D_STATUS = "status"
I2D_SUCCESS = "success"
I2D_ERROR = "error_message"
I2D_ORIGINAL_WIDTH = "original_width"
I2D_ORIGINAL_HEIGHT = "original_height"
I2D_SHA256 = "sha256"
I2D_IMAGE = "jpg"
