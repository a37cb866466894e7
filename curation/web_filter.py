"""Filter web metadata (LAION, COYO) by size, aesthetic, watermark and safety scores with Ray Data.

Ray reads the parquet files, runs `FilterBatch` on each block in parallel and writes what it keeps
together with one tally row per drop reason; the driver then drops repeated URLs and writes the kept
rows as the download list.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lumos.curation.filters import (Filter, MinSide, NonEmpty, Threshold, as_utf8, count_reasons, drop_reasons,
                                    first_reason)
from lumos.curation.url_guard import HttpUrl
from lumos.schemas import web
from lumos.schemas.images import make_id

KEPT_FILE_ROWS = 1_000_000  # img2dataset reads each input file whole: keep them small enough for that


@dataclass(frozen=True)
class WebFilterConfig:
    """Thresholds of one filter job; a None threshold is not applied."""

    source: str
    min_size: int
    min_aesthetic: float | None
    max_watermark: float | None
    max_unsafe: float | None

    def filters(self) -> list[Filter]:
        out: list[Filter] = [NonEmpty(web.URL), HttpUrl(web.URL), MinSide(web.WIDTH, web.HEIGHT, self.min_size)]
        if self.min_aesthetic is not None:
            out.append(Threshold(web.AESTHETIC, self.min_aesthetic, at_least=True))
        if self.max_watermark is not None:
            out.append(Threshold(web.WATERMARK, self.max_watermark, at_least=False))
        if self.max_unsafe is not None:
            out.append(Threshold(web.UNSAFE, self.max_unsafe, at_least=False))
        return out


TEXT_FIELDS = (web.URL, web.CAPTION)
SCORE_FIELDS = (web.AESTHETIC, web.WATERMARK, web.UNSAFE)


def normalise(batch: pa.Table, columns: web.ColumnMap) -> tuple[pa.Table, pa.Array]:
    """Rename a source's columns to the logical fields (a field the file lacks becomes all NULL), in the types
    the filters and the kept list use: text as UTF-8 `string`, scores as float32 (the stored type, so what is
    filtered is what is kept), sizes as they are (MinSide checks them).

    Text that is not valid UTF-8 is made NULL; the second result is each row's reason for that
    (`<field>_not_utf8`, e.g. `caption_not_utf8`), null for rows whose text is fine.
    """
    arrays, bad_text = {}, []
    for field in web.LOGICAL_FIELDS:
        name = columns.physical.get(field)
        values = batch[name].combine_chunks() if name is not None else pa.nulls(len(batch))
        if pa.types.is_dictionary(values.type):  # e.g. a pandas categorical
            values = values.dictionary_decode()
        if field in TEXT_FIELDS:
            values, bad = as_utf8(values)
            bad_text.append((bad, f"{field}_not_utf8"))
        elif field in SCORE_FIELDS:
            values = values.cast(pa.float32(), safe=False)  # 1e300 becomes inf: "missing", as NaN is
        arrays[field] = values
    return pa.table(arrays), first_reason(bad_text, len(batch))


@dataclass
class FilterBatch:
    """Ray Data stage: metadata block in, kept rows plus one tally row per drop reason out."""

    columns: web.ColumnMap
    config: WebFilterConfig

    def __call__(self, batch: pa.Table) -> pa.Table:
        table, unusable = normalise(batch, self.columns)
        reasons = pc.coalesce(unusable, drop_reasons(table, self.config.filters()))  # unusable values first
        kept, dropped = table.filter(pc.is_null(reasons)), count_reasons(reasons)
        urls = kept[web.URL]
        kept_rows = pa.table(
            {
                web.KEPT_URL: urls,
                web.KEPT_ID: pa.array([make_id(self.config.source, u) for u in urls.to_pylist()], pa.string()),
                **{web.KEPT_COLUMNS[f]: kept[f] for f in web.KEPT_COLUMNS},
                web.DROP_REASON: pa.nulls(len(kept), pa.string()),
                web.DROP_COUNT: pa.nulls(len(kept), pa.int64()),
            }
        ).cast(web.FILTERED_SCHEMA)
        tallies = pa.Table.from_pylist(
            [{web.DROP_REASON: reason, web.DROP_COUNT: count} for reason, count in sorted(dropped.items())],
            schema=web.FILTERED_SCHEMA,
        )
        return pa.concat_tables([kept_rows, tallies])


@dataclass
class FilterResult:
    rows: int
    kept: int
    dropped: Counter


def run_filter(files: list[str], columns: web.ColumnMap, config: WebFilterConfig, work_dir: str,
               kept_dir: str) -> FilterResult:
    """Filter `files` with Ray Data into parquet files under `kept_dir`; returns the counts."""
    import ray

    blocks_dir = os.path.join(work_dir, "filtered")
    shutil.rmtree(blocks_dir, ignore_errors=True)
    ds = ray.data.read_parquet(files).select_columns(columns.columns)  # pushed down into the read
    ds = ds.map_batches(FilterBatch(columns, config), batch_format="pyarrow", batch_size=None)
    ds.write_parquet(blocks_dir)
    result = write_kept(sorted_parquet_files(blocks_dir), kept_dir)
    shutil.rmtree(blocks_dir, ignore_errors=True)
    return result


def sorted_parquet_files(folder: str) -> list[str]:
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".parquet"))


def write_kept(filtered_files: list[str], kept_dir: str) -> FilterResult:
    """Sum the tallies, keep one row per URL (`preferred`), write the kept rows as parquet files."""
    dropped: Counter = Counter()
    chunks = []
    for path in filtered_files:
        t = pq.read_table(path, columns=[web.KEPT_ID, web.DROP_REASON, web.DROP_COUNT])
        tally = t.filter(pc.is_valid(t[web.DROP_REASON]))
        for reason, count in zip(tally[web.DROP_REASON].to_pylist(), tally[web.DROP_COUNT].to_pylist()):
            dropped[reason] += count
        chunks.extend(t.filter(pc.is_null(t[web.DROP_REASON]))[web.KEPT_ID].chunks)
    ids = pa.chunked_array(chunks, pa.string())
    counts = pc.value_counts(ids) if len(ids) else pa.array([], pa.struct([("values", pa.string()),
                                                                          ("counts", pa.int64())]))
    repeated = counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    rows = len(ids) + sum(dropped.values())

    os.makedirs(kept_dir, exist_ok=True)
    candidates: dict[str, list[dict]] = {}
    kept = 0
    with _KeptWriter(kept_dir) as writer:
        for path in filtered_files:
            t = pq.read_table(path)
            t = t.filter(pc.is_null(t[web.DROP_REASON])).select(web.KEPT_SCHEMA.names)
            is_repeated = pc.is_in(t[web.KEPT_ID], value_set=repeated)
            for row in t.filter(is_repeated).to_pylist():
                candidates.setdefault(row[web.KEPT_ID], []).append(row)
            once = t.filter(pc.invert(is_repeated))
            writer.write(once)
            kept += once.num_rows
        winners = [min(rows_, key=preferred) for rows_ in candidates.values()]
        writer.write(pa.Table.from_pylist(winners, schema=web.KEPT_SCHEMA))
        kept += len(winners)
    if len(ids) > kept:
        dropped["duplicate_url"] += len(ids) - kept
    return FilterResult(rows=rows, kept=kept, dropped=dropped)


def preferred(row: dict) -> tuple:
    """Order of preference among rows with the same URL: the highest aesthetic score, then a fixed order
    of the other fields, so the choice does not depend on how Ray split or ordered the blocks."""
    score = row[web.KEPT_COLUMNS[web.AESTHETIC]]
    score = -math.inf if score is None or math.isnan(score) else score
    return (-score, json.dumps(row, sort_keys=True, default=str))


class _KeptWriter:
    """Parquet files of at most KEPT_FILE_ROWS rows each."""

    def __init__(self, folder: str):
        self.folder, self.files, self.rows, self.writer = folder, 0, 0, None

    def write(self, table: pa.Table) -> None:
        if self.writer is None or self.rows >= KEPT_FILE_ROWS:
            self.close()
            path = os.path.join(self.folder, f"part-{self.files:05d}.parquet")
            self.writer, self.files, self.rows = pq.ParquetWriter(path, web.KEPT_SCHEMA), self.files + 1, 0
        self.writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
