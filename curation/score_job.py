"""`lumos-curate score`: (re)compute the `aesthetic` column of an existing images table.

Each Lance fragment is read in a Ray task (ids and image blobs) and scored by the actor pool; the workers
write each fragment's new scores as one data file, and the driver grafts those files onto the fragments'
metadata (floor/column_writer.py), tombstoning the old `aesthetic` in the fragment's older files. No other
column, no image byte and none of the table's metadata (the unique-ids marker included) is rewritten or
copied; the driver holds only fragments in flight, never a score per row.
"""

from __future__ import annotations

import os
import time

import pyarrow as pa
import pyarrow.compute as pc

from lumos.curation.dump_job import ScoreConfig
from lumos.curation.job_dir import JobDir
from lumos.curation.scoring import add_scores
from lumos.floor import fs
from lumos.floor.column_writer import WriteParts, fragment_rows, write_columns
from lumos.floor.errors import UserError
from lumos.floor.fragment_reader import fragment_dataset
from lumos.floor.lance_io import clean_versions, keep_version, open_images_table
from lumos.floor.stages import run_stage
from lumos.floor.output_lock import output_lock
from lumos.floor.ray_runtime import init_ray
from lumos.schemas import images as cols
from lumos.schemas.features import ROW, SHARD


def score_table(uri: str, score: ScoreConfig, say=print) -> dict:
    started = time.monotonic()
    open_images_table(uri, "--input")
    from lumos.curation.aesthetic import load_aesthetic_model

    load_aesthetic_model(score.model, score.clip_weights, score.mlp_weights)  # fail before any work
    with output_lock(lock_folder(uri), "lumos-curate score"):
        return _score_locked(uri, score, started, say)


def lock_folder(uri: str) -> str:
    """The folder whose lock covers rewriting the table: the lumos-curate job folder that holds it, when it is
    one (so the job still writing it and a score exclude each other), else the table's own folder."""
    parent = os.path.dirname(os.path.abspath(uri.rstrip("/")))
    job = JobDir(parent)
    if "://" not in uri and os.path.abspath(uri.rstrip("/")) == job.images and os.path.exists(job.record):
        return parent
    return uri


COMMIT_EVERY = 300.0  # seconds between commits of finished fragments: what a killed score can lose
READING_TAG = "lumos-before-score"


def _score_locked(uri: str, score: ScoreConfig, started: float, say) -> dict:
    table = open_images_table(uri, "--input")  # again, under the lock: the version the workers read
    init_ray()
    if any(f.metadata.deletion_file is not None for f in table.get_fragments()):
        raise UserError(f"{uri} has deleted rows; compact it first (lumos-curate compact --input {uri}): a "
                        "fragment's new scores are written for all of its rows")
    rows = {f.fragment_id: n for f in table.get_fragments() if (n := fragment_rows(f))}
    say(f"scoring {sum(rows.values())} images in {len(rows)} fragments with {score.model}")
    schema = pa.schema([table.schema.field(cols.AESTHETIC)])
    staging = fs.join(uri, "_staging_score")
    fs.remove_tree(staging)  # a killed score's parts: we hold the lock
    keep_version(uri, READING_TAG)  # what a reader that started before this score may be reading
    clean_versions(uri, unverified=True)  # and the score files a killed score wrote and never committed
    ds = add_scores(fragment_dataset(uri, table.version, list(rows)), score.model, score.clip_weights,
                    score.mlp_weights)
    ds = ds.select_columns([cols.ID, SHARD, ROW, cols.AESTHETIC])
    ds = run_stage(ds, WriteParts(staging, schema))
    write_columns(ds.iter_rows(), uri, table.version, rows, {f: f for f in rows}, schema, COMMIT_EVERY,
                  replaces=[cols.AESTHETIC])
    fs.remove_tree(staging)
    clean_versions(uri)  # this score's commits but the last, and older versions but the tagged one
    import lance

    total, scored, sum_ = 0, 0, 0.0  # a streaming scan of the one float column
    for batch in lance.dataset(uri).to_batches(columns=[cols.AESTHETIC]):
        values = batch.column(0)
        total, scored = total + len(values), scored + len(values) - values.null_count
        sum_ += pc.sum(values).as_py() or 0.0
    return {
        "rows": total,
        "scored": scored,
        "mean": sum_ / scored if scored else None,
        "model": score.model,
        "timings": {"total_s": round(time.monotonic() - started, 3)},
    }
