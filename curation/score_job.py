"""`lumos-curate score`: (re)compute the `aesthetic` column of an existing images table.

Each Lance fragment is read in a Ray task (ids and image blobs), scored by the actor pool, and the new
scores are written back with one merge on `id`; the other columns and the image bytes are not touched.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from lumos.curation.dump_job import ScoreConfig
from lumos.curation.job_dir import open_images_table
from lumos.curation.scoring import add_scores
from lumos.pipeline.ray_runtime import init_ray
from lumos.schemas import images as cols

ROWS_PER_BLOCK = 64


@dataclass
class ReadFragmentImages:
    """Ray stage: a fragment id in, blocks of (id, image, aesthetic=null) out."""

    uri: str

    def __call__(self, batch: pa.Table):
        import lance

        ds = lance.dataset(self.uri)
        for fragment_id in batch["fragment"].to_pylist():
            ids = ds.get_fragment(fragment_id).to_table(columns=[cols.ID], with_row_address=True)
            for start in range(0, ids.num_rows, ROWS_PER_BLOCK):
                part = ids.slice(start, ROWS_PER_BLOCK)
                blobs = ds.take_blobs(cols.IMAGE, addresses=part["_rowaddr"].to_pylist())
                yield pa.table({
                    cols.ID: part[cols.ID],
                    cols.IMAGE: pa.array([b.read() for b in blobs], pa.large_binary()),
                    cols.AESTHETIC: pa.nulls(part.num_rows, pa.float32()),
                })


def score_table(uri: str, score: ScoreConfig, say=print) -> dict:
    import ray

    started = time.monotonic()
    table = open_images_table(uri, "--input")
    from lumos.curation.aesthetic import load_aesthetic_model

    load_aesthetic_model(score.model, score.clip_weights, score.mlp_weights)  # fail before any work
    init_ray()
    fragments = [f.fragment_id for f in table.get_fragments()]
    say(f"scoring {table.count_rows()} images in {len(fragments)} fragments with {score.model}")
    ds = ray.data.from_items([{"fragment": f} for f in fragments], override_num_blocks=max(len(fragments), 1))
    ds = ds.map_batches(ReadFragmentImages(uri), batch_format="pyarrow", batch_size=1)
    ds = add_scores(ds, score.model, score.clip_weights, score.mlp_weights).select_columns([cols.ID, cols.AESTHETIC])
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
