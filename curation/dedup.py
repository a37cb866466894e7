"""The dump readers' pre-passes on Ray Data (`reader.plan()`, curation/dumps.py): one key, one row, and the
captions and annotations joined to their images, with nothing per row in the driver (DESIGN.md 8).

SA-1B. The same image file name may sit in two folders of one tar, or in a copied tar. Which copy stays is
deterministic: the first in (tar path, offset in the tar) order, i.e. the first tar in sorted path order,
then the first member in tar order. Every other copy is dropped without being decoded, as `duplicate_key`
when its bytes equal the kept copy's and `duplicate_key_conflict` when they differ (two different images
under one name: which one the name means cannot be known). Captions (--captions) join by file name; of a
caption key given twice, the first row in file order wins (files sorted by path, then rows).

    tars ─ TarMembers: CPU tasks read the tar headers only (no image bytes) → (key, unit, offset, size)
    caption files ─ CaptionRows: CPU tasks stream each file → (key as a bare file name, caption, position)
         ─ union, grouped by the key's bucket (key_buckets.py: ~1M rows a group), plan_of_key per key: all
           copies of a key meet its caption rows in one task; the copies of a repeated key are read (a seek
           into the uncompressed tar) and hashed
         → the losing copies (unit, offset, reason) and the kept copies' captions (unit, offset, caption)
         ─ groupby(unit).map_groups(write_sam_plan): one small parquet file per tar that has any such row

JourneyDB. Annotation lines are parsed in tasks (AnnotationLines; one that is not UTF-8 or JSON is that
line's `bad_annotation`); grouped by the key's bucket, per key: the first line in file order wins (`duplicate_key`, or
`duplicate_key_conflict` when the annotation differs), and each row is given its work unit: the folder's
archive DIR/000.tgz when there is one, else its chunk of CHUNK lines; groupby(unit): one parquet file per
unit with its rows in file order.

The driver holds paths (one per tar, archive or file) and gets back one row per written file; each read task
reads its own unit's file. Each plan is written under the job's work folder with a marker (plan.json: a
digest of the inputs and the final units) written last: a resumed job whose inputs are the same reuses it.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lumos.curation.dumps import (CHUNK, caption_bytes, caption_key, escapes, is_text, jdb_archive,
                                  list_tar_members, parse_jdb_line, printable, sam_image_name)
from lumos.curation.key_buckets import by_bucket, groupby, per_key
from lumos.floor import fs
from lumos.floor.stages import Placement, Stage, run_stage
from lumos.schemas import dumps as names
from lumos.schemas import images as cols

ROWS_PER_BLOCK = 65_536  # caption and annotation rows a block, as the tasks stream their files
PLAN_MARKER = "plan.json"
SAM_TAR_ROWS = 11_000  # images an SA-1B tar holds, about: sizes the key buckets
JDB_FILE_ROWS = 1_000_000  # lines an annotation file holds, about (JourneyDB's train file: ~4M)


def parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def planned(folder: str, inputs: dict, units: list[dict], plan: Callable[[], list[dict]]) -> list[dict]:
    """The units `plan()` gives for these inputs, reused from `folder` when a run with the same inputs wrote
    them whole (its marker, written last, says so); else `folder` is cleared and planned again."""
    marker = fs.join(folder, PLAN_MARKER)
    digest = hashlib.sha256(json.dumps({"inputs": inputs, "units": units}, sort_keys=True).encode()).hexdigest()
    if fs.exists(marker):
        saved = fs.read_json(marker)
        if saved.get("digest") == digest:
            return saved["units"]
    fs.remove_tree(folder)
    result = plan()
    fs.write_json(marker, {"digest": digest, "units": result})
    return result


def _column(table: pa.Table, name: str) -> list:
    return table[name].to_pylist()


def _rows_table(rows: list[tuple], schema: pa.Schema) -> pa.Table:
    if not rows:
        return schema.empty_table()
    return pa.Table.from_arrays([pa.array(c, f.type) for c, f in zip(zip(*rows), schema)], schema=schema)


# --- SA-1B --------------------------------------------------------------------------------------------------

@dataclass
class TarMembers(Stage):
    """CPU stage: one tar in, its image members out (headers only: the listing seeks over the data)."""

    def placement(self) -> Placement:
        return Placement(batch_size=1)

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for path, unit in zip(_column(batch, names.ARCHIVE), _column(batch, cols.UNIT)):
            members, _ = list_tar_members(path)  # a damaged tar: the members before the damage (read() says why)
            for member in members:
                key = sam_image_name(member)
                if key is not None:
                    rows.append({cols.KEY: key, names.ARCHIVE: path, cols.UNIT: unit,
                                 names.OFFSET: member.offset_data, names.SIZE: member.size})
        return pa.Table.from_pylist(rows, schema=names.SAM_KEY_SCHEMA)


def _caption_records(source: dict) -> Iterator[tuple[object, object, int]]:
    """(key, caption, position in the file) of each record of one caption file, streamed."""
    key, text = source["key"], source["text"]
    with fs.open_input_file(source[names.INPUT_PATH]) as f:
        if source["format"] == "parquet":
            position = 0
            for batch in pq.ParquetFile(f).iter_batches(batch_size=ROWS_PER_BLOCK, columns=[key, text]):
                keys, texts = batch.column(key), batch.column(text)
                if pa.types.is_string(keys.type) or pa.types.is_large_string(keys.type):
                    keys = keys.cast(pa.large_binary())  # parquet does not check UTF-8 when read: caption_key does
                if pa.types.is_string(texts.type) or pa.types.is_large_string(texts.type):
                    texts = texts.cast(pa.large_binary())
                for k, t in zip(keys.to_pylist(), texts.to_pylist()):
                    yield k, t, position
                    position += 1
        elif source["format"] == "json":  # one JSON array: read whole, in this task
            items = json.loads(f.read().decode("utf-8", "surrogateescape"))
            for position, item in enumerate(items if isinstance(items, list) else []):
                if isinstance(item, dict):
                    yield item.get(key), item.get(text), position
        else:
            position = 0
            for chunk in f:
                for line in chunk.splitlines():
                    position += 1
                    try:  # as text with the bad bytes kept apart: a caption that is not UTF-8 is bad_caption
                        item = json.loads(line.decode("utf-8", "surrogateescape"))
                    except (ValueError, RecursionError):
                        continue  # a line that is not JSON names no image
                    if isinstance(item, dict):
                        yield item.get(key), item.get(text), position


@dataclass
class CaptionRows(Stage):
    """CPU stage: one caption file in (caption_sources()), its (key, caption, position) rows out, in blocks."""

    def placement(self) -> Placement:
        return Placement(batch_size=1)

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        for source in batch.to_pylist():
            keys, texts, lines = [], [], []
            for key, text, position in _caption_records(source):
                key = caption_key(key)
                if key is None:
                    continue
                keys.append(key)
                texts.append(caption_bytes(text))
                lines.append(position)
                if len(keys) == ROWS_PER_BLOCK:
                    yield self._table(keys, texts, source[names.FILE], lines)
                    keys, texts, lines = [], [], []
            if keys:
                yield self._table(keys, texts, source[names.FILE], lines)

    @staticmethod
    def _table(keys: list, texts: list, file: int, lines: list) -> pa.Table:
        n = len(keys)
        return pa.table({cols.KEY: keys, names.ARCHIVE: pa.nulls(n, pa.string()), cols.UNIT: pa.nulls(n, pa.int64()),
                         names.OFFSET: pa.nulls(n, pa.int64()), names.SIZE: pa.nulls(n, pa.int64()),
                         cols.CAPTION: pa.array(texts, pa.binary()), names.FILE: [file] * n, names.LINE: lines},
                        schema=names.SAM_KEY_SCHEMA)


def _sha256(path: str, offset: int, size: int) -> str | None:
    try:
        with fs.open_input_file(path, max(size, 1 << 16)) as f:  # one GET for the member
            f.seek(offset)
            data = f.read(size)
    except (OSError, ValueError, pa.ArrowException):
        return None
    return hashlib.sha256(data).hexdigest() if len(data) == size else None


def plan_of_key(group: pa.Table) -> pa.Table:
    """All copies of one key and its caption rows in; out: the copies that lose to the first, with their
    reason, and the first copy with its caption (the first caption row), when it has one."""
    members = group.filter(pc.is_valid(group[names.ARCHIVE]))
    if members.num_rows == 0:  # a caption whose image is in no tar
        return names.SAM_PLAN_SCHEMA.empty_table()
    members = members.sort_by([(cols.UNIT, "ascending"), (names.OFFSET, "ascending")])
    captions = group.filter(pc.is_null(group[names.ARCHIVE]))
    caption = None
    if captions.num_rows:
        caption = captions.sort_by([(names.FILE, "ascending"), (names.LINE, "ascending")])[cols.CAPTION][0].as_py()
    units, archives, offsets, sizes = (_column(members, c) for c in
                                       (cols.UNIT, names.ARCHIVE, names.OFFSET, names.SIZE))
    rows = [(units[0], offsets[0], None, caption)] if caption is not None else []
    if len(units) > 1:
        kept = _sha256(archives[0], offsets[0], sizes[0])
        for unit, archive, offset, size in zip(units[1:], archives[1:], offsets[1:], sizes[1:]):
            same = kept is not None and size == sizes[0] and _sha256(archive, offset, size) == kept
            rows.append((unit, offset, "duplicate_key" if same else "duplicate_key_conflict", None))
    return _rows_table(rows, names.SAM_PLAN_SCHEMA)


def write_sam_plan(group: pa.Table, folder: str) -> pa.Table:
    """One tar's plan rows in (losers and captions); written as one file, sorted by offset; its path out."""
    group = group.sort_by([(names.OFFSET, "ascending")])
    unit = group[cols.UNIT][0].as_py()
    path = fs.join(folder, f"{unit:08d}.parquet")
    fs.write_bytes(path, parquet_bytes(group))
    return pa.table({names.PLAN_UNIT: [str(unit)], names.ARCHIVE: [None], names.PLAN_PATH: [path]},
                    schema=names.PLAN_FILE_SCHEMA)


def plan_sam(units: list[dict], captions: list[dict], folder: str, inputs: dict) -> list[dict]:
    """The SA-1B units ({tar}) with their plan file ({tar, plan: path or None}) under `folder`."""
    return planned(folder, inputs, units, lambda: _plan_sam(units, captions, folder))


def _plan_sam(units: list[dict], captions: list[dict], folder: str) -> list[dict]:
    import ray

    tars = [{names.ARCHIVE: u["tar"], cols.UNIT: i} for i, u in enumerate(units) if is_text(u["tar"])]
    # a tar whose name is not UTF-8 is counted unreadable by read()
    written: dict[int, str] = {}
    if tars:
        ds = run_stage(ray.data.from_items(tars, override_num_blocks=len(tars)), TarMembers())
        if captions:
            ds = ds.union(run_stage(ray.data.from_items(captions, override_num_blocks=len(captions)), CaptionRows()))
        # keys meet in buckets of ~1M rows (one map_groups call a bucket, not one a key): ~11k images a tar
        rows = by_bucket(ds, cols.KEY, SAM_TAR_ROWS * len(tars), per_key(plan_of_key, cols.KEY, names.SAM_PLAN_SCHEMA))
        files = groupby(rows, cols.UNIT).map_groups(functools.partial(write_sam_plan, folder=folder),
                                                     batch_format="pyarrow")
        written = {int(r[names.PLAN_UNIT]): r[names.PLAN_PATH] for r in files.take_all()}  # one row per tar
    return [{**u, "plan": written.get(i)} for i, u in enumerate(units)]


# --- JourneyDB ----------------------------------------------------------------------------------------------

def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(line number from 1, line) of a file, streamed; lines split as bytes.splitlines() splits them."""
    number = 0
    with fs.open_input_file(path) as f:
        for chunk in f:
            for line in chunk.splitlines():
                number += 1
                yield number, line


@dataclass
class AnnotationLines(Stage):
    """CPU stage: one annotation file in, one row per non-blank line out (parse_jdb_line), in blocks; a line
    that cannot be used is its own `bad_annotation` row, named by its line."""

    files: int  # how many annotation files: with one, a bad line is `annotation-line-N` as it always was

    def placement(self) -> Placement:
        return Placement(batch_size=1)

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        for index, path in zip(_column(batch, names.FILE), _column(batch, names.INPUT_PATH)):
            rows = []
            for number, line in _lines(path):
                if not line.strip():
                    continue
                row = parse_jdb_line(line)
                if row is None:
                    name = (f"annotation-line-{number}" if self.files == 1
                            else f"{printable(path.rsplit('/', 1)[-1])}:line-{number}")
                    rows.append((f"\x00{index}:{number}", name, None, None, "bad_annotation", index, number))
                else:
                    rows.append((row["key"], row["key"], row["prompt"], row["long"], None, index, number))
                if len(rows) == ROWS_PER_BLOCK:
                    yield _rows_table(rows, names.JDB_LINE_SCHEMA)
                    rows = []
            if rows:
                yield _rows_table(rows, names.JDB_LINE_SCHEMA)


@functools.lru_cache(maxsize=4096)
def _archive(root: str, folder: str) -> str | None:
    return jdb_archive(root, folder)  # once per folder in a worker: the check is a request on an object store


def first_line_wins(group: pa.Table, root: str) -> pa.Table:
    """The lines of one key in (a bad line is a group of its own); the first in file order keeps the key,
    the others are `duplicate_key` (the same annotation) or `duplicate_key_conflict`. Each row out with its
    work unit: the folder's archive, or the chunk of CHUNK lines it sits in."""
    rows = group.sort_by([(names.FILE, "ascending"), (names.LINE, "ascending")]).to_pylist()
    first = rows[0]
    if first[cols.DROP_REASON] is None and escapes(first[cols.KEY]):
        first[cols.DROP_REASON] = "outside_input"
    for row in rows[1:]:
        same = (row[cols.CAPTION], row[cols.LONG_CAPTION]) == (first[cols.CAPTION], first[cols.LONG_CAPTION])
        row.update({cols.DROP_REASON: "duplicate_key" if same else "duplicate_key_conflict", cols.CAPTION: None,
                    cols.LONG_CAPTION: None})
    out = []
    for row in rows:
        folder = os.path.dirname(row[cols.KEY]) if row[cols.DROP_REASON] is None else ""
        archive = _archive(root, folder)
        unit = f"a:{folder}" if archive else f"f:{row[names.FILE]:06d}:{(row[names.LINE] - 1) // CHUNK:012d}"
        out.append((*(row[c] for c in names.JDB_LINE_SCHEMA.names), unit, archive))
    return _rows_table(out, names.JDB_PLANNED_SCHEMA)


def write_jdb_unit(group: pa.Table, folder: str) -> pa.Table:
    """One work unit's rows in; written as one file in file order; (unit, archive, path) out."""
    group = group.sort_by([(names.FILE, "ascending"), (names.LINE, "ascending")])
    unit, archive = group[names.PLAN_UNIT][0].as_py(), group[names.ARCHIVE][0].as_py()
    path = fs.join(folder, hashlib.sha1(unit.encode("utf-8", "surrogatepass")).hexdigest()[:20] + ".parquet")
    fs.write_bytes(path, parquet_bytes(group.select(names.JDB_UNIT_SCHEMA.names)))
    return pa.table({names.PLAN_UNIT: [unit], names.ARCHIVE: [archive], names.PLAN_PATH: [path]},
                    schema=names.PLAN_FILE_SCHEMA)


def plan_journeydb(root: str, files: list[str], folder: str, inputs: dict) -> list[dict]:
    """JourneyDB's work units, {archive (or None), annotations: the unit's file under `folder`}, sorted."""
    units = [{"annotation_file": f} for f in files]
    return planned(folder, inputs, units, lambda: _plan_journeydb(root, files, folder))


def _plan_journeydb(root: str, files: list[str], folder: str) -> list[dict]:
    import ray

    items = [{names.FILE: i, names.INPUT_PATH: f} for i, f in enumerate(files)]
    ds = run_stage(ray.data.from_items(items, override_num_blocks=len(items)), AnnotationLines(len(files)))
    first = per_key(functools.partial(first_line_wins, root=root), names.GROUP, names.JDB_PLANNED_SCHEMA)
    rows = by_bucket(ds, names.GROUP, JDB_FILE_ROWS * len(files), first)
    written = groupby(rows, names.PLAN_UNIT).map_groups(functools.partial(write_jdb_unit, folder=folder),
                                                        batch_format="pyarrow").take_all()
    written.sort(key=lambda r: r[names.PLAN_UNIT])  # one row per unit
    return [{"archive": r[names.ARCHIVE], "annotations": r[names.PLAN_PATH]} for r in written]
