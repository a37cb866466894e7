"""`lumos-curate score`: (re)compute the `aesthetic` column of an existing images table.

Each Lance fragment is read in a Ray task (ids and image blobs), scored by the actor pool, and the new
scores are written back with one merge on `id`; the other columns, the image bytes and the table's metadata
(the unique-ids marker included) are not touched.
"""

from __future__ import annotations

import os
import time

import pyarrow as pa
import pyarrow.compute as pc

from lumos.curation.dump_job import ScoreConfig
from lumos.curation.job_dir import JobDir
from lumos.curation.scoring import add_scores
from lumos.floor.fragment_reader import fragment_dataset
from lumos.floor.lance_io import open_images_table
from lumos.floor.output_lock import output_lock
from lumos.floor.ray_runtime import init_ray
from lumos.schemas import images as cols


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


def _score_locked(uri: str, score: ScoreConfig, started: float, say) -> dict:
    table = open_images_table(uri, "--input")  # again, under the lock: the version we rewrite
    init_ray()
    fragments = [f.fragment_id for f in table.get_fragments()]
    say(f"scoring {table.count_rows()} images in {len(fragments)} fragments with {score.model}")
    ds = add_scores(fragment_dataset(uri, table.version, fragments), score.model, score.clip_weights,
                    score.mlp_weights)
    ds = ds.select_columns([cols.ID, cols.AESTHETIC])
    scores = pa.concat_tables(list(ds.iter_batches(batch_format="pyarrow", batch_size=None)))
    if scores.num_rows:
        table.merge_insert(cols.ID).when_matched_update_all().execute(scores)
    values = scores[cols.AESTHETIC]
    return {
        "rows": scores.num_rows,
        "scored": scores.num_rows - values.null_count,
        "mean": pc.mean(values).as_py(),
        "model": score.model,
        "timings": {"total_s": round(time.monotonic() - started, 3)},
    }
