"""Turn img2dataset's finished shards into the images table: one Ray task a shard, whose kept rows become
one fragment, committed with the job's progress as shards finish (curation/unit_writer.py): a killed
ingest re-run reads only the shards not committed, and holds every image exactly once."""

from __future__ import annotations

import io
from dataclasses import dataclass

import pyarrow as pa
from PIL import Image

from lumos.curation.unit_writer import UnitResult, write_unit
from lumos.curation.url_guard import refusal_reason
from lumos.curation.web_decode import decode_reason
from lumos.schemas import images as cols
from lumos.schemas import web

OPT_OUT_MESSAGE = "X-Robots-Tag"  # img2dataset's error for a site that opts its images out of AI use


@dataclass(frozen=True)
class IngestConfig:
    source: str
    min_size: int  # checked again on the downloaded image: metadata sizes are from crawl time


def classify(row: dict, config: IngestConfig) -> str | None:
    """Why a downloaded row cannot be kept, or None."""
    status = row[web.I2D_STATUS]
    if status != web.I2D_SUCCESS:
        error = row[web.I2D_ERROR] or ""
        if OPT_OUT_MESSAGE in error:
            return "opted_out"
        # our decode's reasons (too_large, extreme_aspect, failed_to_decode, failed_to_encode), the guard's
        return decode_reason(error) or refusal_reason(error) or status or "failed_to_download"
    if min(row[web.I2D_ORIGINAL_WIDTH], row[web.I2D_ORIGINAL_HEIGHT]) < config.min_size:
        return "too_small_after_download"
    return None


def as_rgb_jpeg(data: bytes) -> tuple[bytes, int, int]:
    """The stored image as RGB JPEG bytes and its size; re-encodes only what is not RGB already (a check:
    web_decode.py hands img2dataset RGB JPEG)."""
    with Image.open(io.BytesIO(data)) as im:
        if im.mode == "RGB":
            im.verify()
            return data, im.width, im.height
        rgb = im.convert("RGB")
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=95)
    return out.getvalue(), rgb.width, rgb.height


@dataclass
class IngestBatch:
    """Ray Data stage: img2dataset rows in, images-table rows with a drop reason (null: keep) out."""

    config: IngestConfig

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for row in batch.to_pylist():
            reason, image, width, height = classify(row, self.config), None, None, None
            if reason is None:
                try:
                    image, width, height = as_rgb_jpeg(row[web.I2D_IMAGE])
                except Exception:  # noqa: BLE001 - an undecodable file is counted, never fatal
                    reason = "failed_to_decode"
            rows.append(
                {
                    cols.ID: row[web.KEPT_ID],
                    cols.SOURCE: self.config.source,
                    cols.KEY: row[web.KEPT_URL],
                    cols.URL: row[web.KEPT_URL],
                    cols.CAPTION: row[web.KEPT_COLUMNS[web.CAPTION]],
                    cols.AESTHETIC: row[web.KEPT_COLUMNS[web.AESTHETIC]],
                    cols.ORIGINAL_WIDTH: row[web.I2D_ORIGINAL_WIDTH],
                    cols.ORIGINAL_HEIGHT: row[web.I2D_ORIGINAL_HEIGHT],
                    cols.WIDTH: width,
                    cols.HEIGHT: height,
                    cols.SHA256: row[web.I2D_SHA256],
                    cols.IMAGE: image,
                    cols.DROP_REASON: reason,
                }
            )
        return pa.Table.from_pylist(rows, schema=cols.WORK_SCHEMA)


SHARD_BATCH_ROWS = 256  # rows of a shard in memory at a time (~15 MB of 512-px JPEG)


def ingest_shard(index: int, shard: str, config: IngestConfig, uri: str, schema: pa.Schema) -> UnitResult:
    """Inside a Ray task: img2dataset's shard file → its kept rows as one fragment of `uri` (not committed)."""
    import pyarrow.parquet as pq

    stage = IngestBatch(config)
    batches = (stage(pa.Table.from_batches([b])) for b in pq.ParquetFile(shard).iter_batches(SHARD_BATCH_ROWS))
    return write_unit(index, batches, uri, schema)
