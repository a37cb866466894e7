"""`lumos-curate compact`: rewrite a table's small fragments into large ones, and fragments with deleted rows
without them, with distributed Ray workers (lance-ray's `compact_files`), then clean the versions that made
it.

Curation tables can end up with small fragments (the mix writes one per input fragment, with only its chosen
rows; a web ingest one per download shard, the last one short): each costs manifest size and per-fragment
work in every later job. Compact an images table
before `lumos-encode`: a features table follows its images table fragment for fragment, so after the images
table is compacted, encoders can no longer be added to features tables made from it (lumos-encode refuses).
"""

from __future__ import annotations

import time

from lumos.floor.errors import UserError
from lumos.floor.lance_io import clean_versions, keep_version, table_exists
from lumos.floor.output_lock import output_lock
from lumos.floor.ray_runtime import init_ray

READING_TAG = "lumos-before-compact"
ROWS_PER_FRAGMENT = 50_000  # ~1-2 GB of 512-px JPEGs a fragment; see the README


def compact_table(uri: str, rows_per_fragment: int = ROWS_PER_FRAGMENT, say=print) -> dict:
    """Compact the Lance table at `uri` to fragments of about `rows_per_fragment` rows; returns stats."""
    import lance
    import lance_ray
    import ray

    from lumos.curation.score_job import lock_folder

    if rows_per_fragment < 1:
        raise UserError(f"--rows-per-fragment {rows_per_fragment}: must be >= 1")
    if not table_exists(uri):
        raise UserError(f"--input {uri} is not a Lance table")
    started = time.monotonic()
    with output_lock(lock_folder(uri), "lumos-curate compact"):
        ds = lance.dataset(uri)
        before, rows = len(ds.get_fragments()), ds.count_rows()
        init_ray()
        say(f"compacting {rows} rows in {before} fragments to ~{rows_per_fragment} rows a fragment")
        keep_version(uri, READING_TAG)  # a reader that started on it keeps its version
        workers = max(int(ray.cluster_resources().get("CPU", 1)), 1)
        options = {"target_rows_per_fragment": rows_per_fragment,
                   "materialize_deletions": True, "materialize_deletions_threshold": 0.0}  # any deleted row
        lance_ray.compact_files(uri, compaction_options=options, num_workers=workers)
        clean_versions(uri)
        ds = lance.dataset(uri)
        if ds.count_rows() != rows:
            raise RuntimeError(f"{uri}: {ds.count_rows()} rows after compaction, {rows} before")
        return {"rows": rows, "fragments_before": before, "fragments_after": len(ds.get_fragments()),
                "seconds": round(time.monotonic() - started, 3)}
