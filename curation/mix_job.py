"""`lumos-curate mix`: several images tables into one, without duplicates, with optional caps per source.

Which copy of a duplicate stays: the one from the earliest `--input`, and within one input the smallest
`id`. Rows are first de-duplicated by `id` (the same image ingested twice), then by `sha256` (the same bytes
from two sources). A cap keeps a seeded choice: the rows of that source ordered by sha1(seed, id), first N.
Ids are carried over unchanged, so features computed for an input stay valid for the mix.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from lumos.curation.job_dir import JobDir
from lumos.curation.lance_sink import write_counted
from lumos.floor.errors import UserError
from lumos.floor.fs import write_json
from lumos.floor.lance_io import open_images_table
from lumos.floor.output_lock import output_lock
from lumos.floor.ray_runtime import init_ray
from lumos.schemas import images as cols

ROWS_PER_TASK = 256
INPUT = "input_index"
OFFSET = "row_offset"


@dataclass
class TakeRows:
    """Ray stage: (input uri, row offsets) in, the full rows with their image bytes out."""

    schema: pa.Schema

    def __call__(self, batch: pa.Table):
        import lance

        for uri, offsets in zip(batch["uri"].to_pylist(), batch["offsets"].to_pylist()):
            ds = lance.dataset(uri)
            names = [n for n in self.schema.names if n != cols.IMAGE]
            rows = ds.take(offsets, columns=names)
            images = pa.array([b.read() for b in ds.take_blobs(cols.IMAGE, indices=offsets)], pa.large_binary())
            table = rows.append_column(cols.IMAGE, images).append_column(
                cols.DROP_REASON, pa.nulls(len(offsets), pa.string()))
            yield table.cast(cols.WORK_SCHEMA)


def _index(inputs: list[str]) -> pa.Table:
    """id, source, sha256, input position and row offset of every row of every input."""
    parts = []
    for i, uri in enumerate(inputs):
        t = open_images_table(uri, "--input").to_table(columns=[cols.ID, cols.SOURCE, cols.SHA256])
        parts.append(t.append_column(INPUT, pa.array([i] * t.num_rows, pa.int32()))
                      .append_column(OFFSET, pa.array(range(t.num_rows), pa.int64())))
    return pa.concat_tables(parts)


def _first_per(index: pa.Table, key: str) -> tuple[pa.Table, pa.Table]:
    """(rows kept, rows dropped): of the rows sharing `key`, the earliest input then smallest id stays."""
    ordered = index.sort_by([(key, "ascending"), (INPUT, "ascending"), (cols.ID, "ascending")])
    keys = ordered[key].combine_chunks()
    first = pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1)) if len(keys) else pa.array([], pa.bool_())
    keep = pa.concat_arrays([pa.array([True] * min(len(keys), 1)), first.fill_null(True)])
    return ordered.filter(keep), ordered.filter(pc.invert(keep))


def select(index: pa.Table, take: dict[str, int], dedup: bool, seed: int) -> tuple[pa.Table, dict]:
    """The rows of the mix, and per source: rows, kept and dropped by reason."""
    dropped_by = {}
    kept, dup = _first_per(index, cols.ID)
    dropped_by["duplicate_id"] = dup
    if dedup:
        kept, dup = _first_per(kept, cols.SHA256)
        dropped_by["duplicate_sha256"] = dup
    capped = []
    for source, cap in take.items():
        rows = kept.filter(pc.equal(kept[cols.SOURCE], source))
        if rows.num_rows > cap:
            rank = pa.array([hashlib.sha1(f"{seed}:{i}".encode()).hexdigest() for i in rows[cols.ID].to_pylist()])
            over = rows.append_column("rank", rank).sort_by("rank").slice(cap).drop_columns(["rank"])
            capped.append(over)
    if capped:
        over = pa.concat_tables(capped)
        dropped_by["over_cap"] = over
        kept = kept.filter(pc.invert(pc.is_in(kept[cols.ID], value_set=over[cols.ID])))
    per_source = {}
    for source in sorted(set(index[cols.SOURCE].to_pylist())):
        dropped = Counter({reason: pc.sum(pc.equal(t[cols.SOURCE], source)).as_py() or 0
                           for reason, t in dropped_by.items()})
        per_source[source] = {
            "rows": pc.sum(pc.equal(index[cols.SOURCE], source)).as_py() or 0,
            "kept": pc.sum(pc.equal(kept[cols.SOURCE], source)).as_py() or 0,
            "dropped": {k: v for k, v in sorted(dropped.items()) if v},
        }
    return kept, per_source


def run_mix(inputs: list[str], output: str, take: dict[str, int], dedup: bool, seed: int, say=print) -> dict:
    import lance

    started = time.monotonic()
    if not inputs:
        raise UserError("give at least one --input table")
    index = _index(inputs)
    unknown = sorted(set(take) - set(index[cols.SOURCE].to_pylist()))
    if unknown:
        raise UserError(f"--take names sources the inputs do not have: {', '.join(unknown)}")
    record = {"source": "mix", "inputs": inputs, "take": take, "dedup": "sha256" if dedup else None, "seed": seed,
              "input_jobs": [cols.job_of(lance.dataset(u).schema).get("job") for u in inputs]}
    with output_lock(output, "lumos-curate mix"):  # one writer, from the first write to the last
        return _mix_locked(inputs, output, index, record, take, dedup, seed, started, say)


def _mix_locked(inputs, output, index, record, take, dedup, seed, started, say) -> dict:
    import ray

    paths = JobDir(output)
    if paths.finished(record):
        say(f"{paths.root} already holds this finished job: nothing to do")
        return paths.read_stats()
    kept, per_source = select(index, take, dedup, seed)  # ids de-duplicated: the table is marked unique-ids
    paths.start(record)
    init_ray()
    tasks = []
    for i, uri in enumerate(inputs):
        offsets = sorted(kept.filter(pc.equal(kept[INPUT], i))[OFFSET].to_pylist())
        tasks += [{"uri": uri, "offsets": offsets[s : s + ROWS_PER_TASK]} for s in range(0, len(offsets), ROWS_PER_TASK)]
    ds = None
    if tasks:
        ds = ray.data.from_items(tasks, override_num_blocks=len(tasks))
        ds = ds.map_batches(TakeRows(cols.IMAGES_SCHEMA), batch_format="pyarrow", batch_size=1)
    result = write_counted(ds, paths.images, paths.schema(record))
    dropped = Counter()
    for s in per_source.values():
        dropped.update(s["dropped"])
    stats = {"rows": index.num_rows, "kept": result.kept, "dropped": dict(sorted(dropped.items())),
             "sources": per_source, "timings": {"total_s": round(time.monotonic() - started, 3)}}
    assert stats["rows"] == stats["kept"] + sum(dropped.values()), stats
    write_json(paths.stats, stats)
    return stats
