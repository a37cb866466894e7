"""`lumos-curate score`: (re)compute the `aesthetic` column of an existing images table.

Each Lance fragment is read in a Ray task (ids and image blobs), scored by the actor pool, and the new
scores are written back with one merge on `id`; the other columns and the image bytes are not touched.
"""

from __future__ import annotations

import time

import pyarrow as pa
import pyarrow.compute as pc

from lumos.curation.dump_job import ScoreConfig
from lumos.curation.job_dir import open_images_table
from lumos.curation.scoring import add_scores
from lumos.pipeline.fragment_reader import fragment_dataset
from lumos.pipeline.ray_runtime import init_ray
from lumos.schemas import images as cols


def score_table(uri: str, score: ScoreConfig, say=print) -> dict:
    started = time.monotonic()
    table = open_images_table(uri, "--input")
    from lumos.curation.aesthetic import load_aesthetic_model

    load_aesthetic_model(score.model, score.clip_weights, score.mlp_weights)  # fail before any work
    init_ray()
    fragments = [f.fragment_id for f in table.get_fragments()]
    say(f"scoring {table.count_rows()} images in {len(fragments)} fragments with {score.model}")
    ds = add_scores(fragment_dataset(uri, fragments), score.model, score.clip_weights, score.mlp_weights)
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
