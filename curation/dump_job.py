"""`lumos-curate sam|journeydb|imagenet`: read a local dump, prepare and score each image, filter, and
write the images table in one Lance commit.

    units (driver) → [SA-1B: find repeated keys, curation/dedup.py] → read + decode/check/resize (CPU tasks)
                   → CLIP preprocess (CPU tasks) → aesthetic model (actor pool, GPUs when present)
                   → threshold → Lance, with counts

The whole run holds the output's lock (one writer per folder). Nothing a file holds can stop the job: a
bad image, sidecar or annotation is a reason on its row, an unreadable archive one row of its own, named
with its error in stats.json (`unreadable_archives`).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass

import pyarrow as pa

from lumos.curation.dumps import RawImage, one_line
from lumos.curation.filters import Threshold
from lumos.curation.job_dir import JobDir, stage_stats
from lumos.curation.lance_sink import write_counted
from lumos.curation.prepare import PrepareConfig, Prepared, prepare
from lumos.curation.scoring import add_scores
from lumos.floor.errors import UserError
from lumos.floor.fs import write_json
from lumos.floor.output_lock import output_lock
from lumos.floor.ray_runtime import init_ray
from lumos.schemas import dumps as names
from lumos.schemas import images as cols

ROWS_PER_BLOCK = 64


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
class ReadPrepare:
    """CPU stage: one work unit in, blocks of images-table rows (with a drop reason) out."""

    reader: object
    config: PrepareConfig

    def __call__(self, batch: pa.Table):
        rows = []
        for unit in batch["unit"].to_pylist():
            for raw in self.raws(json.loads(unit)):
                rows.append(self.row(raw))
                if len(rows) == ROWS_PER_BLOCK:
                    yield pa.Table.from_pylist(rows, schema=names.DUMP_WORK_SCHEMA)
                    rows = []
        if rows:
            yield pa.Table.from_pylist(rows, schema=names.DUMP_WORK_SCHEMA)

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


@dataclass
class AestheticGate:
    """Drop rows still kept whose score is below `bound` (NaN or missing: `aesthetic_missing`)."""

    bound: float

    def __call__(self, batch: pa.Table) -> pa.Table:
        import pyarrow.compute as pc

        reasons = Threshold(cols.AESTHETIC, self.bound, at_least=True).drop_reasons(batch)
        merged = pc.coalesce(batch[cols.DROP_REASON], reasons)
        return batch.set_column(batch.schema.get_field_index(cols.DROP_REASON), cols.DROP_REASON, merged)


def run_dump_job(reader, output: str, prepare_config: PrepareConfig, score: ScoreConfig | None,
                 record_extra: dict, say=print) -> dict:
    started = time.monotonic()
    units = reader.units()  # the inputs are checked before the output is touched
    record = {"source": reader.source, **record_extra, "prepare": asdict(prepare_config),
              "score": asdict(score) if score else None}
    with output_lock(output, f"lumos-curate {reader.source}"):
        return _run_locked(reader, units, record, output, prepare_config, score, started, say)


def _run_locked(reader, units: list[dict], record: dict, output: str, prepare_config: PrepareConfig,
                score: ScoreConfig | None, started: float, say) -> dict:
    import ray

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
    reader = reader.dedup(units)  # SA-1B: a pre-pass over the tar headers finds repeated keys
    timings = {"dedup_s": round(time.monotonic() - dedup_started, 3)}

    ds = ray.data.from_items([{"unit": json.dumps(u)} for u in units], override_num_blocks=len(units))
    ds = ds.map_batches(ReadPrepare(reader, prepare_config), batch_format="pyarrow", batch_size=1)
    if score is not None:
        ds = add_scores(ds, score.model, score.clip_weights, score.mlp_weights)
        if score.min_aesthetic > 0:
            ds = ds.map_batches(AestheticGate(score.min_aesthetic), batch_format="pyarrow", batch_size=None)
    result = write_counted(ds, paths.images, paths.schema(record), listed=("unreadable_archive",))

    timings["total_s"] = round(time.monotonic() - started, 3)
    stats = {**stage_stats(result.rows, result.kept, result.dropped), "unreadable_archives": result.listed,
             "timings": timings}
    assert stats["rows"] == stats["kept"] + sum(stats["dropped"].values()), stats
    write_json(paths.stats, stats)
    return stats
