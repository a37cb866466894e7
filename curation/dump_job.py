"""`lumos-curate sam|journeydb|imagenet`: read a dump, prepare and score each image, filter, and write the
images table unit by unit (a tar, an archive, a chunk of files), committed as units finish.

    units (driver) → plan: distributed pre-passes (SA-1B repeated keys and captions, JourneyDB annotations)
                   → read + decode/check/resize (CPU tasks) → CLIP preprocess (CPU tasks)
                   → aesthetic model (actor pool, GPUs when present) → threshold
                   → WriteUnitParts: each unit's rows into part files (CPU tasks)
    driver: once a unit's parts hold all its rows, a Ray task writes them as ONE fragment (finalize_unit);
            finished units are committed with the job's progress every --commit-every s (unit_writer.py)

A killed job re-run reads only the units not committed. The image bytes are written twice (a part, then
the fragment; each part is deleted once its unit's fragment is written): the price of fragments the size
of a unit from a pipeline whose blocks mix units and pass through an actor pool.

The whole run holds the output's lock (one writer per folder). Nothing a file holds can stop the job: a
bad image, sidecar or annotation is a reason on its row, an unreadable archive one row of its own, named
with its error in stats.json (`unreadable_archives`).
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import asdict, dataclass

import pyarrow as pa
import pyarrow.compute as pc

from lumos.curation.dumps import RawImage, one_line
from lumos.curation.filters import Threshold
from lumos.curation.job_dir import JobDir, stage_stats
from lumos.curation.unit_writer import COMMIT_EVERY_S, UnitResult, UnitTable, run_unit_tasks, write_unit
from lumos.curation.prepare import PrepareConfig, Prepared, prepare
from lumos.curation.scoring import add_scores
from lumos.floor.errors import UserError
from lumos.floor import fs
from lumos.floor.column_writer import ipc_bytes, read_ipc
from lumos.floor.fs import write_json
from lumos.floor.output_lock import output_lock
from lumos.floor.stages import Placement, Stage, run_stage
from lumos.floor.ray_runtime import init_ray
from lumos.schemas import dumps as names
from lumos.schemas import images as cols
from lumos.schemas.features import PART_PATH, PART_ROWS

ROWS_PER_BLOCK = 64
UNIT_JSON = "unit_json"  # in flight: the work unit's description, for ReadPrepare
LISTED = ("unreadable_archive",)  # few by nature (one row per archive): named in stats.json
MAX_FINALIZING = 4  # units being written as fragments at a time (each streams its parts, ~one batch in memory)


@dataclass
class ScoreConfig:
    model: str = "laion-v2"
    clip_weights: str | None = None
    mlp_weights: str | None = None
    min_aesthetic: float = 0.0  # 0: score, but filter nothing

    def __post_init__(self):
        from lumos.curation.aesthetic import USER_MODELS

        if self.model not in USER_MODELS:
            raise UserError(f"--aesthetic-model {self.model}: choose one of {', '.join(USER_MODELS)}")


@dataclass
class ReadPrepare(Stage):
    """CPU stage: one work unit in, blocks of images-table rows (with a drop reason) out."""

    reader: object
    config: PrepareConfig

    def placement(self) -> Placement:
        return Placement(batch_size=1)  # one unit a call

    def __call__(self, batch: pa.Table):
        for unit, index in zip(batch[UNIT_JSON].to_pylist(), batch[cols.UNIT].to_pylist()):
            yield from self.blocks(json.loads(unit), index)

    def blocks(self, unit: dict, index: int):
        """The unit's rows in blocks tagged with the unit's index; the last block also says how many rows the
        unit has (`unit_rows`), so that the writer knows when the unit is whole (one block is held back)."""
        rows, held, total = [], None, 0
        for raw in self.raws(unit):
            rows.append(self.row(raw))
            total += 1
            if len(rows) == ROWS_PER_BLOCK:
                if held is not None:
                    yield _tagged(held, index, None)
                held, rows = rows, []
        last = rows or held
        if held is not None and rows:
            yield _tagged(held, index, None)
        if last:
            yield _tagged(last, index, total)

    def raws(self, unit: dict):
        """The reader's rows; should it fail all the same, the unit becomes one unreadable row (the rows
        it gave stay): with Ray's max_errored_blocks at 0, any exception here would end the whole job."""
        try:
            yield from self.reader.read(unit)
        except Exception as err:  # noqa: BLE001 - the last guard between one file and the job
            name = unit.get("tar") or unit.get("archive") or json.dumps(unit)[:200]
            yield RawImage(key=str(name), data=None, reason="unreadable_archive", error=one_line(err))

    def row(self, raw: RawImage) -> dict:
        prepared = prepare(raw.data, self.config) if raw.reason is None else None
        reason = raw.reason or prepared.reason
        # SA-1B declares the size of the pixels as stored; a file with an EXIF orientation is also
        # accepted at its displayed size (what original_width/height hold).
        if reason is None and raw.declared_size and raw.declared_size not in (
                prepared.stored_size, (prepared.original_width, prepared.original_height)):
            reason = "size_mismatch"  # the annotation and the file disagree: one of them is wrong
        p = prepared or Prepared()  # a row refused while reading: nothing was decoded
        return {
            cols.ID: cols.make_id(self.reader.source, raw.key),
            cols.SOURCE: self.reader.source,
            cols.KEY: raw.key,
            cols.CAPTION: raw.caption,
            cols.LONG_CAPTION: raw.long_caption,
            cols.CLASS_INDEX: raw.class_index,
            cols.SYNSET: raw.synset,
            cols.ORIGINAL_WIDTH: p.original_width,
            cols.ORIGINAL_HEIGHT: p.original_height,
            cols.WIDTH: p.width,
            cols.HEIGHT: p.height,
            cols.SHA256: p.sha256,
            cols.IMAGE: p.image if reason is None else None,
            cols.DROP_REASON: reason,
            names.ERROR: raw.error,
        }



def _tagged(rows: list[dict], index: int, total: int | None) -> pa.Table:
    table = pa.Table.from_pylist(rows, schema=names.DUMP_WORK_SCHEMA)
    return table.append_column(cols.UNIT, pa.array([index] * len(rows), pa.int64())).append_column(
        cols.UNIT_ROWS, pa.array([total] * len(rows), pa.int64()))


@dataclass
class WriteUnitParts(Stage):
    """CPU stage, last of the pipeline: each unit's rows of the block → one part file (Arrow IPC) in
    `staging`; out: one small row per part (unit, rows, the unit's total when this block knows it, path)."""

    staging: str

    def __call__(self, batch: pa.Table) -> pa.Table:
        out = []
        for index in pc.unique(batch[cols.UNIT]).to_pylist():
            rows = batch.filter(pc.equal(batch[cols.UNIT], index))
            total = pc.max(rows[cols.UNIT_ROWS]).as_py()
            rows = rows.select(names.DUMP_WORK_SCHEMA.names).cast(names.DUMP_WORK_SCHEMA)
            path = fs.join(self.staging, str(index), f"{uuid.uuid4().hex}.arrow")
            fs.write_bytes(path, ipc_bytes(rows))
            out.append({cols.UNIT: index, PART_ROWS: rows.num_rows, cols.UNIT_ROWS: total, PART_PATH: path})
        return pa.Table.from_pylist(out, schema=PART_SCHEMA)


PART_SCHEMA = pa.schema([(cols.UNIT, pa.int64()), (PART_ROWS, pa.int64()), (cols.UNIT_ROWS, pa.int64()),
                         (PART_PATH, pa.string())])


def finalize_unit(index: int, parts: list[str], uri: str, schema: pa.Schema) -> UnitResult:
    """Inside a Ray task: every part of one unit → its kept rows as one fragment of `uri` (not committed)."""
    result = write_unit(index, (read_ipc(p) for p in parts), uri, schema, listed=LISTED)
    for path in parts:
        fs.remove(path)
    return result


def whole_units(parts_rows, pending: list[int], parts: dict[int, list[str]]):
    """Driver: the pipeline's small part rows → the index of each unit once all its rows are in parts (None
    between blocks), its part files in `parts`; at the end, the units that gave no row at all (no part)."""
    seen: dict[int, list] = {}  # unit → [rows so far, total or None]: units in flight only
    whole: set[int] = set()
    for block in parts_rows:
        for row in block.to_pylist():
            index = row[cols.UNIT]
            entry = seen.setdefault(index, [0, None])
            entry[0] += row[PART_ROWS]
            entry[1] = entry[1] if row[cols.UNIT_ROWS] is None else row[cols.UNIT_ROWS]
            parts.setdefault(index, []).append(row[PART_PATH])
            if entry[0] == entry[1]:
                del seen[index]
                whole.add(index)
                yield index
        yield None
    if seen:  # every row went through the pipeline: a unit still short of its count lost rows
        index, (rows, total) = next(iter(seen.items()))
        raise RuntimeError(f"work unit {index}: {rows} rows written of {total}")
    for index in pending:
        if index not in whole:
            parts[index] = []
            yield index


@dataclass
class AestheticGate(Stage):
    """Drop rows still kept whose score is below `bound` (NaN or missing: `aesthetic_missing`)."""

    bound: float

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow.compute as pc

        reasons = Threshold(cols.AESTHETIC, self.bound, at_least=True).drop_reasons(batch)
        merged = pc.coalesce(batch[cols.DROP_REASON], reasons)
        return batch.set_column(batch.schema.get_field_index(cols.DROP_REASON), cols.DROP_REASON, merged)


def run_dump_job(reader, output: str, prepare_config: PrepareConfig, score: ScoreConfig | None,
                 record_extra: dict, say=print, commit_every: float = COMMIT_EVERY_S) -> dict:
    started = time.monotonic()
    units = reader.units()  # the inputs are checked before the output is touched
    record = {"source": reader.source, **record_extra, "prepare": asdict(prepare_config),
              "score": asdict(score) if score else None}
    with output_lock(output, f"lumos-curate {reader.source}"):
        return _run_locked(reader, units, record, output, prepare_config, score, started, say, commit_every)


def _run_locked(reader, units: list[dict], record: dict, output: str, prepare_config: PrepareConfig,
                score: ScoreConfig | None, started: float, say, commit_every: float) -> dict:
    import ray
    from tqdm import tqdm

    paths = JobDir(output)
    if paths.finished(record):
        say(f"{paths.root} already holds this finished job: nothing to do")
        return paths.read_stats()
    if score is not None:  # fail on missing weights now, in one line, before anything is written
        from lumos.curation.aesthetic import load_aesthetic_model

        load_aesthetic_model(score.model, score.clip_weights, score.mlp_weights)
    paths.start(record)
    init_ray()
    say(f"{reader.source}: {len(units)} work units")
    dedup_started = time.monotonic()
    reader, units = reader.plan(units, paths.work)
    timings = {"plan_s": round(time.monotonic() - dedup_started, 3)}

    table = UnitTable(paths.images, paths.schema(record), [json.dumps(u, sort_keys=True) for u in units],
                      commit_every)
    pending = table.pending()
    staging = fs.join(paths.work, "parts")
    fs.remove_tree(staging)  # a killed run's parts: their units were not committed and are read again
    if pending:
        ds = ray.data.from_items([{UNIT_JSON: json.dumps(units[i]), cols.UNIT: i} for i in pending],
                                 override_num_blocks=len(pending))
        ds = run_stage(ds, ReadPrepare(reader, prepare_config))
        if score is not None:
            ds = add_scores(ds, score.model, score.clip_weights, score.mlp_weights)
            if score.min_aesthetic > 0:
                ds = run_stage(ds, AestheticGate(score.min_aesthetic))
        ds = run_stage(ds, WriteUnitParts(staging))
        parts: dict[int, list[str]] = {}
        finalize = ray.remote(finalize_unit)
        schema = paths.schema(record)
        with tqdm(total=len(pending), unit="unit", desc=reader.source, dynamic_ncols=True) as bar:
            run_unit_tasks(table, lambda i: finalize.remote(i, parts.pop(i), paths.images, schema),
                           whole_units(ds.iter_batches(batch_format="pyarrow", batch_size=None), pending, parts),
                           max_in_flight=MAX_FINALIZING, on_done=lambda _: bar.update(1))
    result = table.finish()
    fs.remove_tree(staging)

    timings["total_s"] = round(time.monotonic() - started, 3)
    stats = {**stage_stats(result.rows, result.kept, result.dropped), "unreadable_archives": result.listed,
             "timings": timings}
    assert stats["rows"] == stats["kept"] + sum(stats["dropped"].values()), stats
    write_json(paths.stats, stats)
    return stats
