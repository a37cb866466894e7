"""Turn img2dataset's finished shards into the images table, in one Lance commit.

Each shard is one Ray task that checks every row, writes the kept ones as Lance fragments and returns
them with its drop counts; the driver commits all fragments at once. A killed ingest therefore leaves no
table (only orphan data files, removed on the re-run) and a finished one holds every image exactly once.
"""

from __future__ import annotations

import io
import os
import shutil
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from lumos.schemas import images as cols
from lumos.schemas import web

OPT_OUT_MESSAGE = "X-Robots-Tag"  # img2dataset's error for a site that opts its images out of AI use


@dataclass(frozen=True)
class IngestConfig:
    source: str
    min_size: int  # checked again on the downloaded image: metadata sizes are from crawl time


@dataclass
class ShardResult:
    rows: int
    dropped: Counter
    fragments: list = field(default_factory=list)


def classify(row: dict, config: IngestConfig) -> str | None:
    """Why a downloaded row cannot be kept, or None."""
    status = row[web.I2D_STATUS]
    if status != web.I2D_SUCCESS:
        if OPT_OUT_MESSAGE in (row[web.I2D_ERROR] or ""):
            return "opted_out"
        return status or "failed_to_download"
    if min(row[web.I2D_ORIGINAL_WIDTH], row[web.I2D_ORIGINAL_HEIGHT]) < config.min_size:
        return "too_small_after_download"
    return None


def as_rgb_jpeg(data: bytes) -> tuple[bytes, int, int]:
    """The stored image as RGB JPEG bytes and its size; re-encodes only what is not RGB already."""
    with Image.open(io.BytesIO(data)) as im:
        if im.mode == "RGB":
            im.verify()
            return data, im.width, im.height
        rgb = im.convert("RGB")
    out = io.BytesIO()
    rgb.save(out, "JPEG", quality=95)
    return out.getvalue(), rgb.width, rgb.height


def ingest_shard(path: str, config: IngestConfig, uri: str, schema: pa.Schema) -> ShardResult:
    from lance.fragment import write_fragments

    table = pq.read_table(path)
    dropped: Counter = Counter()
    rows = []
    for row in table.to_pylist():
        reason = classify(row, config)
        if reason is None:
            try:
                image, width, height = as_rgb_jpeg(row[web.I2D_IMAGE])
            except Exception:  # noqa: BLE001 - any undecodable file is counted, never fatal
                reason = "failed_to_decode"
        if reason is not None:
            dropped[reason] += 1
            continue
        rows.append(
            {
                cols.ID: row[web.KEPT_ID],
                cols.SOURCE: config.source,
                cols.KEY: row[web.KEPT_URL],
                cols.URL: row[web.KEPT_URL],
                cols.CAPTION: row[web.KEPT_COLUMNS[web.CAPTION]],
                cols.AESTHETIC: row[web.KEPT_COLUMNS[web.AESTHETIC]],
                cols.ORIGINAL_WIDTH: row[web.I2D_ORIGINAL_WIDTH],
                cols.ORIGINAL_HEIGHT: row[web.I2D_ORIGINAL_HEIGHT],
                cols.WIDTH: width,
                cols.HEIGHT: height,
                cols.IMAGE: image,
                cols.SHA256: row[web.I2D_SHA256],
            }
        )
    result = ShardResult(rows=table.num_rows, dropped=dropped)
    if rows:
        result.fragments = write_fragments(pa.Table.from_pylist(rows, schema=schema), uri, schema=schema)
    return result


@dataclass
class IngestResult:
    rows: int
    kept: int
    dropped: Counter


def run_ingest(shards: list[str], config: IngestConfig, uri: str, schema: pa.Schema, progress) -> IngestResult:
    """Ingest `shards` with one Ray task each and commit them as a new Lance table at `uri`."""
    import lance
    import ray

    shutil.rmtree(uri, ignore_errors=True)  # leftovers of a killed ingest: nothing was committed
    task = ray.remote(num_cpus=1)(ingest_shard)
    pending = [task.remote(path, config, uri, schema) for path in shards]
    rows, dropped, fragments = 0, Counter(), []
    bar = progress.add_task("ingest shards", total=len(pending))
    while pending:
        done, pending = ray.wait(pending, num_returns=1)
        result: ShardResult = ray.get(done[0])
        rows += result.rows
        dropped.update(result.dropped)
        fragments.extend(result.fragments)
        progress.advance(bar)
    if fragments:
        ds = lance.LanceDataset.commit(uri, lance.LanceOperation.Overwrite(schema, fragments))
    else:
        ds = lance.write_dataset(schema.empty_table(), uri, schema=schema)
    return IngestResult(rows=rows, kept=ds.count_rows(), dropped=dropped)


def table_exists(uri: str) -> bool:
    import lance

    if not os.path.exists(uri) and "://" not in uri:
        return False
    try:
        lance.dataset(uri)
    except (ValueError, OSError):
        return False
    return True
