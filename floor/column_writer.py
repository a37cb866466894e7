"""New columns for the fragments of an existing Lance table, written by Ray workers, committed as fragment
metadata only (what lumos-encode and lumos-curate score share).

A Ray pipeline that read a table fragment by fragment (floor/fragment_reader.py: `shard`, `row` columns)
ends in `WriteParts`: each block's rows go, per fragment, to a part file (Arrow IPC) in a staging folder;
the driver (`write_columns`) counts each fragment's rows in from the small rows WriteParts returns, and once
a fragment is whole, a Ray task (`finalize_fragment`) puts its parts in row order, checks them against the
target fragment's ids, and writes ONE data file of the new columns for it (Lance `write_fragments` against
the pinned table, so the field ids are the table's). The driver grafts those files onto the fragments'
metadata in a `Merge` commit every `commit_every` seconds and at the end (`graft`); a column that is being
replaced is tombstoned in the fragment's older files (Lance's own mark for a dropped field), so those files
are neither rewritten nor copied. Feature bytes never pass through the driver, which holds only the
fragments in flight and the files not yet committed.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lumos.floor import fs
from lumos.floor.stages import Stage
from lumos.schemas.features import PART_PATH, PART_ROWS, ROW, SHARD
from lumos.schemas.images import ID

WRITE_ROWS = 64  # rows handed to Lance's writer at a time: it then holds ~that much beyond the table itself
TOMBSTONE = -2  # Lance's field id for a field of a data file that is no longer read from it


@dataclass
class WriteParts(Stage):
    """CPU stage: rows with `shard` and `row` → one part file per fragment in the batch (row offset, id, the
    `schema` columns); out: one small row per part (shard, rows, path)."""

    staging: str
    schema: pa.Schema

    def __call__(self, batch: pa.Table) -> pa.Table:
        schema = pa.schema([pa.field(ROW, pa.int32()), pa.field(ID, pa.string()), *self.schema])
        out = []
        for shard in pc.unique(batch[SHARD]).to_pylist():
            rows = batch.filter(pc.equal(batch[SHARD], shard)).select(schema.names).cast(schema)
            path = fs.join(self.staging, str(shard), f"{uuid.uuid4().hex}.arrow")
            fs.write_bytes(path, ipc_bytes(rows))
            out.append({SHARD: shard, PART_ROWS: rows.num_rows, PART_PATH: path})
        return pa.Table.from_pylist(out, schema=pa.schema([(SHARD, pa.int64()), (PART_ROWS, pa.int64()),
                                                           (PART_PATH, pa.string())]))


def fragment_rows(fragment) -> int:
    """Live rows of a fragment from its metadata (reads a deletion file only when it has one)."""
    return fragment.count_rows() if fragment.metadata.deletion_file is not None else fragment.metadata.physical_rows


def ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def read_ipc(path: str) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(fs.read_bytes(path))).read_all()


def finalize_fragment(uri: str, version: int, fragment_id: int, parts: list[str], schema: pa.Schema,
                      replace: bool = False) -> tuple[int, list[dict]]:
    """All the parts of one fragment → one data file of the `schema` columns for fragment `fragment_id` of
    the table at `uri` (not committed). Returns (fragment id, the data-file records to graft onto it).
    `replace`: the columns exist in a table whose other columns may be non-nullable (Lance then refuses a
    write of a subset), so the file is written through the fragment's own column merge under temporary names
    and its fields mapped back to the existing columns (flat columns only)."""
    from lance.fragment import write_fragments

    from lumos.floor.fragment_reader import open_version

    ds = open_version(uri, version)
    table = pa.concat_tables([read_ipc(p) for p in parts]).sort_by(ROW)
    ids = ds.get_fragment(fragment_id).to_table(columns=[ID])[ID]
    if not np.array_equal(table[ROW].to_numpy(), np.arange(len(ids))) or not table[ID].equals(ids):
        raise RuntimeError(f"{uri} fragment {fragment_id}: the rows written do not match its {len(ids)} ids")
    table = table.select(schema.names)
    if replace:
        files = _merged_file(ds, fragment_id, table)
    else:
        batches = pa.RecordBatchReader.from_batches(schema, table.to_batches(max_chunksize=WRITE_ROWS))
        written = write_fragments(batches, ds, schema=schema, max_rows_per_file=len(ids) + 1)
        if len(written) != 1:
            raise RuntimeError(f"{uri} fragment {fragment_id}: {len(written)} fragments written, expected 1")
        files = written[0].to_json()["files"]
    for path in parts:
        fs.remove(path)
    return fragment_id, files


def _merged_file(ds, fragment_id: int, table: pa.Table) -> list[dict]:
    """`table` (the fragment's rows, in order) as a new data file of fragment `fragment_id`, its fields the
    table's existing ones of the same names."""
    temporary = [f"{name}__lumos_new" for name in table.column_names]
    renamed = table.rename_columns(temporary)
    fragment = ds.get_fragment(fragment_id)
    ids = fragment.to_table(columns=[ID])[ID].to_pylist()
    position = {id_: i for i, id_ in enumerate(ids)}  # one fragment's ids, in this worker

    def same_rows(batch) -> pa.RecordBatch:  # a contiguous run of the fragment's rows (Lance may probe twice)
        batch_ids = batch.column(ID).to_pylist()
        start = position[batch_ids[0]] if batch_ids else 0
        if ids[start:start + len(batch_ids)] != batch_ids:
            raise RuntimeError(f"fragment {fragment_id}: merge batches are not runs of its rows")
        part = renamed.slice(start, len(batch_ids))
        return pa.RecordBatch.from_arrays([c.combine_chunks() for c in part.columns], schema=renamed.schema)

    old = {d.path for d in fragment.metadata.files}
    meta, merged = fragment.merge_columns(same_rows, columns=[ID], batch_size=WRITE_ROWS)
    field_map = {}
    for name, temp in zip(table.column_names, temporary):
        new_field = merged.field(temp)
        if new_field.children():
            raise RuntimeError(f"{name}: only flat columns can be replaced this way")
        field_map[new_field.id()] = ds.lance_schema.field(name).id()
    files = [f for f in meta.to_json()["files"] if f["path"] not in old]
    for f in files:
        f["fields"] = [field_map[i] for i in f["fields"]]
    return files


def graft(uri: str, written: dict[int, list[dict]], replaces: list[str] = ()):
    """Commit the data files written for some fragments (fragment id → its new files) in one `Merge` commit of
    fragment metadata. Fields named in `replaces` are tombstoned in those fragments' older files."""
    import lance
    from lance.fragment import FragmentMetadata

    ds = lance.dataset(uri)
    replaced = {ds.lance_schema.field(name).id() for name in replaces}
    fragments = []
    for f in ds.get_fragments():
        meta = f.metadata
        if f.fragment_id in written:
            raw = meta.to_json()
            for data_file in raw["files"]:
                data_file["fields"] = [TOMBSTONE if i in replaced else i for i in data_file["fields"]]
            raw["files"] = raw["files"] + written[f.fragment_id]
            meta = FragmentMetadata.from_json(json.dumps(raw))
        fragments.append(meta)
    return lance.LanceDataset.commit(uri, lance.LanceOperation.Merge(fragments, ds.lance_schema),
                                     read_version=ds.version)


def write_columns(parts_rows, uri: str, version: int, expected: dict[int, int], target: dict[int, int],
                  schema: pa.Schema, commit_every: float, replaces: list[str] = (), on_rows=None) -> None:
    """The driver's side: `parts_rows` (an iterable of WriteParts' small rows) → finalize each fragment when
    all its rows are in parts → graft the files, one commit every `commit_every` seconds and at the end.
    `expected`: source fragment (`shard`) → rows; `target`: source fragment → fragment of `uri` to write to.
    A failing run still commits the fragments it finished, so that a re-run skips them."""
    import ray

    finalize = ray.remote(finalize_fragment)
    parts: dict[int, list] = {}  # source fragment → [rows so far, part paths]: fragments in flight only
    running, written, last_commit = [], {}, time.monotonic()

    def collect(block: bool) -> None:
        nonlocal running, last_commit
        if running:
            ready, running = ray.wait(running, num_returns=len(running) if block else 1, timeout=None if block else 0)
            for fragment, files in ray.get(ready):
                written[fragment] = files
        if written and (block or time.monotonic() - last_commit > commit_every):
            graft(uri, written, replaces)
            written.clear()
            last_commit = time.monotonic()

    try:
        for part in parts_rows:  # small rows: the column bytes never pass through this process
            shard = part[SHARD]
            if on_rows:
                on_rows(part[PART_ROWS])
            entry = parts.setdefault(shard, [0, []])
            entry[0] += part[PART_ROWS]
            entry[1].append(part[PART_PATH])
            if entry[0] == expected[shard]:
                running.append(finalize.remote(uri, version, target[shard], entry[1], schema, bool(replaces)))
                del parts[shard]
            collect(block=False)
    except BaseException:
        if written:
            graft(uri, written, replaces)
        raise
    collect(block=True)
    if parts:
        raise RuntimeError(f"{len(parts)} fragments of {uri} were not written whole")
