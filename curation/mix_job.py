"""`lumos-curate mix`: several images tables into one, without duplicates, with optional caps per source.

Which copy of a duplicate stays: the one from the earliest `--input`, and within one input the smallest
`id`. Rows are first de-duplicated by `id` (the same image ingested twice), then by `sha256` (the same bytes
from two sources). A cap keeps a seeded choice: the rows of that source ordered by sha1(seed, id), first N.
Ids are carried over unchanged, so features computed for an input stay valid for the mix.

The mix copies each chosen image once: it writes the chosen rows, in large fragments, from workers, and
resumably. How, with nothing per row in the driver (DESIGN.md 8):

    1. select (once; its result lives in _work/ and a re-run reuses it)
       index: one Ray task per input fragment reads (id, source, sha256, row address)
       → groupby(bucket of id).map_groups: the first copy of each id stays (Ray Data shuffles by bucket, the
         first hex digits of the hashed key, ~1M rows a bucket: all copies of a key meet, and each bucket is
         one vectorised sort, not one call a key)
       → groupby(bucket of sha256).map_groups: the same for the bytes   → _work/verdicts/*.parquet
       caps: a histogram of each capped source's ranks (sha1(seed, id), 65,536 buckets by their first 16 bits)
       finds the bucket holding the N-th row; only that bucket's ranks (~rows/65,536) come to the driver,
       which gives the exact cut-off; each worker then keeps a row when its rank is at or under it
       → groupby(input, fragment): one small file of chosen row addresses per input fragment
    2. write: one Ray task per input fragment takes its chosen rows (image bytes through Lance's blob API)
       and writes them as one fragment of the mix; committed with the job's progress every --commit-every
       s (unit_writer.py), so a killed mix re-run writes only the fragments it had not committed.
The driver holds per-source counts, the histogram (65,536 counts a capped source), one file name per input
fragment, and the fragment metadata not yet committed.
"""

from __future__ import annotations

import hashlib
import time
from collections import Counter
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lumos.curation.job_dir import JobDir
from lumos.curation.key_buckets import by_bucket, groupby
from lumos.curation.unit_writer import COMMIT_EVERY_S, UnitTable, run_unit_tasks, write_unit
from lumos.floor import fs
from lumos.floor.errors import UserError
from lumos.floor.fragment_reader import open_version
from lumos.floor.fs import write_json
from lumos.floor.lance_io import open_images_table
from lumos.floor.output_lock import output_lock
from lumos.floor.ray_runtime import cluster_cpus, init_ray
from lumos.floor.stages import Placement, Stage, run_stage
from lumos.schemas import images as cols

INPUT = "input_index"
FRAGMENT = "fragment_id"
ADDRESS = "row_address"  # Lance's (fragment << 32 | offset) of the row in its input
RANK = "rank"  # sha1(seed:id): the order of the seeded choice under a cap
BUCKET_HEX = 4  # a rank's first 16 bits: the histogram's bucket
ROWS_PER_BATCH = 64  # rows of images a write task holds at a time
INDEX_SCHEMA = pa.schema([(cols.ID, pa.string()), (cols.SOURCE, pa.string()), (cols.SHA256, pa.string()),
                          (INPUT, pa.int32()), (FRAGMENT, pa.int64()), (ADDRESS, pa.uint64()),
                          (cols.DROP_REASON, pa.string())])


@dataclass
class IndexRows(Stage):
    """Ray stage: (input, fragment) in, that fragment's (id, source, sha256, address) out, none dropped."""

    inputs: list[str]
    versions: list[int]

    def placement(self) -> Placement:
        return Placement(batch_size=1)  # one fragment a call

    def __call__(self, batch: pa.Table):
        for i, fragment in zip(batch[INPUT].to_pylist(), batch[FRAGMENT].to_pylist()):
            ds = open_version(self.inputs[i], self.versions[i])
            t = ds.get_fragment(fragment).to_table(columns=[cols.ID, cols.SOURCE, cols.SHA256], with_row_address=True)
            n = t.num_rows
            yield pa.table([t[cols.ID], t[cols.SOURCE], t[cols.SHA256], pa.array([i] * n, pa.int32()),
                            pa.array([fragment] * n, pa.int64()), t["_rowaddr"], pa.nulls(n, pa.string())],
                           schema=INDEX_SCHEMA)


def first_per_key(key: str, reason: str):
    """Bucket function (key_buckets.py): of the rows still kept that share `key`, the earliest input
    then smallest id (then row address) stays; the others get `reason`. Rows dropped before pass through.
    Vectorised: one sort of the bucket, then a comparison of neighbours."""

    def verdicts(group: pa.Table) -> pa.Table:
        order = pc.sort_indices(group, [(key, "ascending"), (cols.DROP_REASON, "ascending"), (INPUT, "ascending"),
                                        (cols.ID, "ascending"), (ADDRESS, "ascending")], null_placement="at_start")
        group = group.take(order)
        keys = group[key].combine_chunks()
        first = np.ones(len(keys), bool)  # the first row of each key: live if any copy is (nulls sort first)
        if len(keys) > 1:
            first[1:] = pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1)).to_numpy(zero_copy_only=False)
        live = pc.is_null(group[cols.DROP_REASON]).to_numpy(zero_copy_only=False)
        merged = pc.if_else(pa.array(live & ~first), pa.scalar(reason), group[cols.DROP_REASON])
        return group.set_column(group.schema.get_field_index(cols.DROP_REASON), cols.DROP_REASON, merged)

    return verdicts


def unique_by(ds, key: str, reason: str, rows: int):
    """`ds` with the later copies of each `key` dropped as `reason` (grouped by the key's bucket)."""
    return by_bucket(ds, key, rows, first_per_key(key, reason), hashed=True)


def ranks(ids: pa.Array, seed: int) -> pa.Array:
    return pa.array([hashlib.sha1(f"{seed}:{i}".encode()).hexdigest() for i in ids.to_pylist()], pa.string())


@dataclass
class CapRanks(Stage):
    """Ray stage: the rank of each row still kept of a capped source (null elsewhere)."""

    capped: list[str]
    seed: int

    def __call__(self, batch: pa.Table) -> pa.Table:
        mask = pc.and_(pc.is_null(batch[cols.DROP_REASON]), pc.is_in(batch[cols.SOURCE], pa.array(self.capped)))
        rank = pc.if_else(mask, ranks(batch[cols.ID], self.seed), pa.scalar(None, pa.string()))
        return batch.append_column(RANK, rank)


@dataclass
class Histogram(Stage):
    """Ray stage: per capped source, the block's ranked rows counted per bucket, as one dense row (65,536
    counts: what the driver adds up is the same size whatever the rows)."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        ranked = batch.filter(pc.is_valid(batch[RANK]))
        sources, counts = [], []
        for source in pc.unique(ranked[cols.SOURCE]).to_pylist():
            mine = ranked.filter(pc.equal(ranked[cols.SOURCE], source))[RANK].to_pylist()
            buckets = np.fromiter((int(r[:BUCKET_HEX], 16) for r in mine), np.int64, len(mine))
            sources.append(source)
            counts.append(np.bincount(buckets, minlength=16 ** BUCKET_HEX))
        return pa.table({cols.SOURCE: pa.array(sources, pa.string()),
                         "counts": pa.array(counts, pa.list_(pa.int64()))})


def _cutoffs(ranked, caps: dict[str, int]) -> dict[str, str]:
    """For each capped source with more rows than its cap: the rank of its N-th row (rows at or under it stay)."""
    counts: dict[str, np.ndarray] = {s: np.zeros(16 ** BUCKET_HEX, np.int64) for s in caps}
    for block in run_stage(ranked, Histogram()).iter_batches(batch_format="pyarrow", batch_size=None):
        for k, source in enumerate(block[cols.SOURCE].to_pylist()):
            counts[source] += block["counts"][k].values.to_numpy()
    cutoffs = {}
    for source, cap in caps.items():
        total = counts[source].sum()
        if total <= cap:
            continue
        if cap == 0:
            cutoffs[source] = ""  # below every rank: nothing stays
            continue
        cumulative = np.cumsum(counts[source])
        bucket = int(np.searchsorted(cumulative, cap))  # the bucket holding the cap-th row
        before = int(cumulative[bucket - 1]) if bucket else 0
        prefix = f"{bucket:0{BUCKET_HEX}x}"
        in_bucket = run_stage(ranked, RanksIn(source, prefix))
        ranks_there = sorted(r for b in in_bucket.iter_batches(batch_format="pyarrow", batch_size=None)
                             for r in b[RANK].to_pylist())  # ~rows/65,536 of them
        cutoffs[source] = ranks_there[cap - before - 1]
    return cutoffs


@dataclass
class RanksIn(Stage):
    """Ray stage: the ranks of one source's rows in one histogram bucket."""

    source: str
    prefix: str

    def __call__(self, batch: pa.Table) -> pa.Table:
        mine = pc.and_(pc.equal(batch[cols.SOURCE], self.source), pc.starts_with(batch[RANK], self.prefix))
        return batch.filter(mine.fill_null(False)).select([RANK])


@dataclass
class Kept(Stage):
    """Ray stage: the rows with no drop reason."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        return batch.filter(pc.is_null(batch[cols.DROP_REASON]))


@dataclass
class ApplyCaps(Stage):
    """Ray stage: a ranked row over its source's cut-off is dropped as `over_cap`."""

    cutoffs: dict[str, str]

    def __call__(self, batch: pa.Table) -> pa.Table:
        over = pa.array([False] * batch.num_rows)
        for source, cutoff in self.cutoffs.items():
            mine = pc.and_(pc.equal(batch[cols.SOURCE], source), pc.is_valid(batch[RANK]))
            over = pc.or_(over, pc.and_(mine, pc.greater(batch[RANK], cutoff)).fill_null(False))
        reason = pc.if_else(over, pa.scalar("over_cap"), batch[cols.DROP_REASON])
        batch = batch.set_column(batch.schema.get_field_index(cols.DROP_REASON), cols.DROP_REASON, reason)
        return batch.drop_columns([RANK])


@dataclass
class CountReasons(Stage):
    """Ray stage: rows per (source, drop reason) in a block (reason "" for the kept rows)."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        reasons = pc.fill_null(batch[cols.DROP_REASON], "")
        table = pa.table({cols.SOURCE: batch[cols.SOURCE], cols.DROP_REASON: reasons})
        return table.group_by([cols.SOURCE, cols.DROP_REASON], use_threads=False).aggregate([([], "count_all")])


def _write_selection(folder: str):
    """map_groups function: the kept rows of one input fragment → one parquet file of their addresses."""

    def write(group: pa.Table) -> pa.Table:
        import pyarrow.parquet as pq

        i, fragment = group[INPUT][0].as_py(), group[FRAGMENT][0].as_py()
        addresses = pc.sort_indices(group[ADDRESS])
        sink = pa.BufferOutputStream()
        pq.write_table(pa.table({ADDRESS: group[ADDRESS].take(addresses)}), sink)
        fs.write_bytes(fs.join(folder, f"{i}-{fragment}.parquet"), sink.getvalue().to_pybytes())
        return pa.table({INPUT: [i], FRAGMENT: [fragment], "rows": [group.num_rows]})

    return write


def select(inputs: list[str], versions: list[int], units: list[tuple[int, int]], take: dict[str, int],
           dedup: bool, seed: int, work: str) -> tuple[dict, dict]:
    """Step 1: the chosen rows of each input fragment into `work`/selection/; returns per source (rows, kept,
    dropped by reason) and {unit index: chosen rows} for the units with any."""
    import ray

    ds = ray.data.from_items([{INPUT: i, FRAGMENT: f} for i, f in units], override_num_blocks=max(len(units), 1))
    ds = run_stage(ds, IndexRows(inputs, versions))
    rows = sum(open_version(u, v).count_rows() for u, v in zip(inputs, versions))
    ds = unique_by(ds, cols.ID, "duplicate_id", rows)
    if dedup:
        ds = unique_by(ds, cols.SHA256, "duplicate_sha256", rows)
    verdicts = fs.join(work, "verdicts")
    fs.remove_tree(verdicts)
    ds.write_parquet(verdicts)
    ds = ray.data.read_parquet(verdicts)
    if take:
        ranked = run_stage(ds, CapRanks(sorted(take), seed)).materialize()
        ds = run_stage(ranked, ApplyCaps(_cutoffs(ranked, take)))
        ds = ds.materialize()  # read twice below: counted, then grouped
    per_source: dict[str, dict] = {}
    for block in run_stage(ds, CountReasons()).iter_batches(batch_format="pyarrow", batch_size=None):
        for source, reason, n in zip(*(block[c].to_pylist() for c in (cols.SOURCE, cols.DROP_REASON, "count_all"))):
            entry = per_source.setdefault(source, {"rows": 0, "kept": 0, "dropped": Counter()})
            entry["rows"] += n
            if reason:
                entry["dropped"][reason] += n
            else:
                entry["kept"] += n
    selection = fs.join(work, "selection")
    fs.remove_tree(selection)
    kept = run_stage(ds, Kept())
    chosen = {}
    position = {unit: k for k, unit in enumerate(units)}
    written = groupby(kept, [INPUT, FRAGMENT]).map_groups(_write_selection(selection), batch_format="pyarrow")
    for block in written.iter_batches(batch_format="pyarrow", batch_size=None):
        for i, fragment, rows in zip(*(block[c].to_pylist() for c in (INPUT, FRAGMENT, "rows"))):
            chosen[position[(i, fragment)]] = rows
    fs.remove_tree(verdicts)
    stats = {s: {"rows": e["rows"], "kept": e["kept"], "dropped": dict(sorted(e["dropped"].items()))}
             for s, e in sorted(per_source.items())}
    return stats, chosen


def mix_unit(index: int, uri: str, version: int, fragment: int, selection: str | None, out: str,
             schema: pa.Schema):
    """Step 2, inside a Ray task: the chosen rows of one input fragment → one fragment of the mix."""
    import pyarrow.parquet as pq

    def batches():
        if selection is None:
            return
        ds = open_version(uri, version)
        wanted = pq.read_table(pa.BufferReader(fs.read_bytes(selection)))[ADDRESS]
        plain = [n for n in schema.names if n != cols.IMAGE]
        rows = ds.get_fragment(fragment).to_table(columns=plain, with_row_address=True)
        rows = rows.filter(pc.is_in(rows["_rowaddr"], value_set=wanted))  # in fragment order
        for start in range(0, rows.num_rows, ROWS_PER_BATCH):
            part = rows.slice(start, ROWS_PER_BATCH)
            blobs = ds.take_blobs(cols.IMAGE, addresses=part["_rowaddr"].to_pylist())
            images = pa.array([b.read() for b in blobs], pa.large_binary())
            yield part.drop_columns(["_rowaddr"]).append_column(cols.IMAGE, images).append_column(
                cols.DROP_REASON, pa.nulls(part.num_rows, pa.string()))

    return write_unit(index, batches(), out, schema)


def run_mix(inputs: list[str], output: str, take: dict[str, int], dedup: bool, seed: int, say=print,
            commit_every: float = COMMIT_EVERY_S) -> dict:
    import lance

    started = time.monotonic()
    if not inputs:
        raise UserError("give at least one --input table")
    tables = [open_images_table(u, "--input") for u in inputs]
    sources = set()
    for ds in tables:  # a scan of one small column per input
        sources.update(pc.unique(ds.to_table(columns=[cols.SOURCE])[cols.SOURCE]).to_pylist())
    unknown = sorted(set(take) - sources)
    if unknown:
        raise UserError(f"--take names sources the inputs do not have: {', '.join(unknown)}")
    record = {"source": "mix", "inputs": inputs, "take": take, "dedup": "sha256" if dedup else None, "seed": seed,
              "input_jobs": [cols.job_of(lance.dataset(u).schema).get("job") for u in inputs],
              "input_versions": [ds.version for ds in tables]}  # a resumed mix reads what the first run read
    with output_lock(output, "lumos-curate mix"):  # one writer, from the first write to the last
        return _mix_locked(inputs, tables, output, record, take, dedup, seed, started, say, commit_every)


def _mix_locked(inputs, tables, output, record, take, dedup, seed, started, say, commit_every) -> dict:
    import ray
    from tqdm import tqdm

    paths = JobDir(output)
    if paths.finished(record):
        say(f"{paths.root} already holds this finished job: nothing to do")
        return paths.read_stats()
    versions = [ds.version for ds in tables]
    units = [(i, f.fragment_id) for i, ds in enumerate(tables) for f in ds.get_fragments()]
    paths.start(record)
    init_ray()
    selected = fs.join(paths.work, "selection.json")
    if fs.exists(selected):  # chosen once: a re-run writes what the first run chose
        done = fs.read_json(selected)
        per_source, chosen = done["sources"], {int(k): v for k, v in done["chosen"].items()}
    else:
        say(f"mix: choosing rows from {len(units)} fragments of {len(inputs)} tables")
        per_source, chosen = select(inputs, versions, units, take, dedup, seed, paths.work)
        write_json(selected, {"sources": per_source, "chosen": {str(k): v for k, v in chosen.items()}})

    # the ids are de-duplicated: the table is marked unique-ids (paths.schema)
    table = UnitTable(paths.images, paths.schema(record), [f"{i}:{f}" for i, f in units], commit_every)
    pending = table.pending()
    task, schema = ray.remote(mix_unit), paths.schema(record)

    def submit(k: int):
        i, fragment = units[k]
        selection = fs.join(paths.work, "selection", f"{i}-{fragment}.parquet") if k in chosen else None
        return task.remote(k, inputs[i], versions[i], fragment, selection, paths.images, schema)

    with tqdm(total=len(pending), unit="fragment", desc="mix", dynamic_ncols=True) as bar:
        run_unit_tasks(table, submit, iter(pending), max_in_flight=2 * cluster_cpus(),
                       on_done=lambda _: bar.update(1))
    result = table.finish()
    dropped = Counter()
    for s in per_source.values():
        dropped.update(s["dropped"])
    rows = sum(s["rows"] for s in per_source.values())
    stats = {"rows": rows, "kept": result.kept, "dropped": dict(sorted(dropped.items())),
             "sources": per_source, "timings": {"total_s": round(time.monotonic() - started, 3)}}
    assert stats["rows"] == stats["kept"] + sum(dropped.values()), stats
    write_json(paths.stats, stats)
    return stats
