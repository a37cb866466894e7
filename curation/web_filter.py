"""Filter web metadata (LAION, COYO) by size, aesthetic, watermark and safety scores with Ray Data.

One key is one image: of the rows that pass the filters and share a URL (so an id, `web.KEPT_ID`), one is
kept and the others are counted as `duplicate_url`. Which one, whatever the split into files and blocks: the
highest aesthetic score (a missing one, None or NaN, counts as -inf), then the smallest url, caption, width,
height, watermark, unsafe, in that order (text by code point, numbers by value, NaN after the numbers, None
last), then the stored score itself (NaN before None). This is a sort, so it runs vectorised in pyarrow.
(Before, the tie-break after the score compared the rows' JSON text; that order could not be vectorised.)

How, with nothing per row in the driver (DESIGN.md 8):

    metadata parquet ─ FilterBatch (Ray Data, per block): kept rows + one tally row per drop reason
                     → work/filtered/*.parquet
    1. Bucketed, then groupby(bucket).map_groups(unique_bucket): a kept row's bucket is the first `digits`
       hex digits of its id (a sha1 of the URL, so this partitions by a hash of the key), `digits` chosen
       from the files' footers for ~BUCKET_ROWS rows a bucket; every copy of an id meets in its bucket, which
       is sorted (id, then the preference) and keeps the first row of each id → work/unique/<bucket>.arrow,
       sorted by id. The tally rows travel as one more bucket and are summed there. The driver gets, per
       bucket, its unique rows and its repeats (`duplicate_url`), and per reason its sum: O(buckets + reasons)
    2. WriteKeptFiles: the unique rows in id order (the buckets in name order) are cut into files of
       exactly KEPT_FILE_ROWS rows (the last one fewer); one Ray task a file reads its rows from the
       bucket files → kept_dir/part-NNNNN.parquet
The output depends on the input rows alone: the same files, rows and order on every run. img2dataset reads
the files in name order and cuts its download shards per file, so with KEPT_FILE_ROWS a multiple of the
shard size the shards are those of one list, ceil(kept / shard size) of them, the same on a re-run.
"""

from __future__ import annotations

import math
import os
import shutil
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lumos.curation.filters import (Filter, MinSide, NonEmpty, Threshold, as_utf8, count_reasons, drop_reasons,
                                    first_reason)
from lumos.curation.url_guard import HttpUrl
from lumos.curation.key_buckets import bucket_digits, groupby
from lumos.floor import fs
from lumos.floor.stages import Placement, Stage, run_stage
from lumos.schemas import web
from lumos.schemas.images import make_id

KEPT_FILE_ROWS = 1_000_000  # img2dataset reads each input file whole: keep them small enough for that
BUCKET = "id_bucket"  # the first hex digits of the id: the partition key of the de-duplication
TALLIES = "tallies"  # the bucket of the tally rows (not hex: never an id's)
RANK = "rank"  # -aesthetic, missing as +inf: ascending is the preference
FILE = "file"  # a kept file's number
ROWS = "rows"  # rows of a bucket's outcome (kept, or dropped under a reason), or of a kept file
UNIQUE_BATCH = 64 * 1024  # rows a record batch of the bucket files (all but a file's last one)
OUTCOME_SCHEMA = pa.schema([(BUCKET, pa.string()), (web.DROP_REASON, pa.string()), (ROWS, pa.int64())])


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
    result = write_kept(sorted_parquet_files(blocks_dir), kept_dir, os.path.join(work_dir, "unique"))
    shutil.rmtree(blocks_dir, ignore_errors=True)
    return result


def sorted_parquet_files(folder: str) -> list[str]:
    return sorted(os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".parquet"))


def write_kept(filtered_files: list[str], kept_dir: str, unique_dir: str | None = None) -> FilterResult:
    """Sum the tallies, keep one row per id (the module docstring says which), write the kept rows as parquet
    files of KEPT_FILE_ROWS rows in id order; all in Ray Data. `unique_dir` (default: inside `kept_dir`) holds
    the de-duplicated buckets meanwhile and is removed at the end."""
    import ray

    os.makedirs(kept_dir, exist_ok=True)
    dropped: Counter = Counter()
    buckets: dict[str, int] = {}  # bucket → its unique rows: at most 16^digits entries, ~rows / BUCKET_ROWS
    unique_dir = unique_dir or os.path.join(kept_dir, "_unique")
    fs.remove_tree(unique_dir)
    if filtered_files:
        rows_in = sum(pq.read_metadata(f).num_rows for f in filtered_files)  # a footer a file: sizes the buckets
        ds = run_stage(ray.data.read_parquet(filtered_files), Bucketed(bucket_digits(rows_in)))
        ds = groupby(ds, BUCKET).map_groups(unique_bucket(unique_dir, UNIQUE_BATCH), batch_format="pyarrow")
        for block in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for bucket, reason, n in zip(*(block[c].to_pylist() for c in (BUCKET, web.DROP_REASON, ROWS))):
                if reason is None:
                    buckets[bucket] = n
                else:
                    dropped[reason] += n
    names = sorted(buckets)
    sizes = [buckets[b] for b in names]
    kept = sum(sizes)
    if kept:
        files = -(-kept // KEPT_FILE_ROWS)
        plan = ray.data.from_items([{FILE: i} for i in range(files)], override_num_blocks=files)
        written = run_stage(plan, WriteKeptFiles(unique_dir, UNIQUE_BATCH, names, sizes, kept_dir, KEPT_FILE_ROWS))
        assert sum(r[ROWS] for r in written.take_all()) == kept  # a row a file
    fs.remove_tree(unique_dir)
    return FilterResult(rows=kept + sum(dropped.values()), kept=kept, dropped=dropped)


@dataclass
class Bucketed(Stage):
    """Ray stage: a filtered block in, each row with its bucket out: a kept row's is the first `digits` hex
    digits of its id, a tally row's is TALLIES (so the tallies meet in one group, and no extra pass reads them)."""

    digits: int

    def __call__(self, batch: pa.Table) -> pa.Table:
        prefix = pc.utf8_slice_codeunits(batch[web.KEPT_ID], 0, self.digits)
        bucket = pc.if_else(pc.is_null(batch[web.DROP_REASON]), prefix, pa.scalar(TALLIES))
        return batch.select(web.FILTERED_SCHEMA.names).append_column(BUCKET, bucket)


def first_per_id(rows: pa.Table) -> pa.Table:
    """The preferred row of each id (see the module docstring), sorted by id."""
    score = rows[web.KEPT_COLUMNS[web.AESTHETIC]]
    missing = pc.fill_null(pc.is_nan(score), True)
    rank = pc.if_else(missing, pa.scalar(math.inf, pa.float32()), pc.negate(score))
    ranked = rows.append_column(RANK, rank)
    tie_break = [web.KEPT_URL, *(web.KEPT_COLUMNS[f] for f in (web.CAPTION, web.WIDTH, web.HEIGHT, web.WATERMARK,
                                                               web.UNSAFE, web.AESTHETIC))]
    order = pc.sort_indices(ranked, [(c, "ascending", "at_end") for c in (web.KEPT_ID, RANK, *tie_break)])
    ids = rows[web.KEPT_ID].take(order).combine_chunks()
    first = np.ones(len(ids), bool)  # the first row of each run of one id
    if len(ids) > 1:
        first[1:] = pc.not_equal(ids[1:], ids[:-1]).to_numpy(zero_copy_only=False)
    return rows.take(order.filter(pa.array(first))).select(web.KEPT_SCHEMA.names).cast(web.KEPT_SCHEMA)


def unique_bucket(folder: str, batch_rows: int):
    """map_groups function: the rows of one bucket in. A bucket of kept rows: its unique rows, sorted by id,
    written to `folder` as one Arrow IPC file of `batch_rows`-row batches (a writer then reads only the batches
    it needs, and no parquet encoding is spent on a scratch file); out (bucket, null, unique rows) and
    (bucket, duplicate_url, repeats). The tallies: out (TALLIES, reason, sum) per reason."""

    def write(group: pa.Table) -> pa.Table:
        bucket = group[BUCKET][0].as_py()
        if bucket == TALLIES:
            sums = group.group_by(web.DROP_REASON, use_threads=False).aggregate([(web.DROP_COUNT, "sum")])
            return pa.table([pa.array([TALLIES] * sums.num_rows, pa.string()), sums[web.DROP_REASON],
                             sums[f"{web.DROP_COUNT}_sum"]], schema=OUTCOME_SCHEMA)
        unique = first_per_id(group).combine_chunks()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_file(sink, web.KEPT_SCHEMA) as writer:
            writer.write_table(unique, max_chunksize=batch_rows)
        fs.write_bytes(fs.join(folder, f"{bucket}.arrow"), sink.getvalue().to_pybytes())
        repeats = group.num_rows - unique.num_rows
        n = 2 if repeats else 1  # a duplicate_url row only when there are repeats
        return pa.table([[bucket] * n, [None, "duplicate_url"][:n], [unique.num_rows, repeats][:n]],
                        schema=OUTCOME_SCHEMA)

    return write


@dataclass
class WriteKeptFiles(Stage):
    """Ray stage: kept-file numbers in; each file's rows (`file_rows` of the id order, from the bucket files)
    written to `kept_dir`; (file, rows) out."""

    unique_dir: str
    batch_rows: int  # rows a batch of the bucket files
    buckets: list[str]  # in id order
    sizes: list[int]  # unique rows of each bucket
    kept_dir: str
    file_rows: int

    def placement(self) -> Placement:
        return Placement(batch_size=1)  # one file a call

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        starts = np.concatenate([[0], np.cumsum(self.sizes)])  # each bucket's first row in the id order
        for i in batch[FILE].to_pylist():
            begin, end = i * self.file_rows, min((i + 1) * self.file_rows, int(starts[-1]))
            parts = []
            for b in range(int(np.searchsorted(starts, begin, side="right")) - 1, len(self.buckets)):
                if starts[b] >= end:
                    break
                path = fs.join(self.unique_dir, f"{self.buckets[b]}.arrow")
                parts.append(_read_rows(path, self.batch_rows, max(begin - starts[b], 0),
                                        min(end, starts[b + 1]) - starts[b]))
            table = pa.concat_tables(parts)
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            fs.write_bytes(fs.join(self.kept_dir, f"part-{i:05d}.parquet"), sink.getvalue().to_pybytes())
            yield pa.table({FILE: [i], ROWS: [table.num_rows]})


def _read_rows(path: str, batch_rows: int, begin: int, end: int) -> pa.Table:
    """Rows [begin, end) of a bucket file, reading only the batches that hold them."""
    filesystem, inner = fs.resolve(path)
    with filesystem.open_input_file(inner) as f:
        reader = pa.ipc.open_file(f)
        first = begin // batch_rows
        table = pa.Table.from_batches([reader.get_batch(i) for i in range(first, (end - 1) // batch_rows + 1)],
                                      web.KEPT_SCHEMA)
    return table.slice(begin - first * batch_rows, end - begin)
