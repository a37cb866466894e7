"""Metadata filter throughput: the Ray Data job of `lumos-curate laion` against one process of pyarrow.

Both run the same per-block filter (`FilterBatch`: in one process, or as Ray Data tasks) and the same final
pass (`write_kept`: tallies, repeated URLs, kept files; a Ray Data job itself in both, since the duplicate-URL
pass runs on the cluster) over the same LAION-shaped parquet files, so the ratio measures what the Ray
executor adds or saves on the filter. Ray's start-up (ray.init, then one warm-up job over one file so the
worker processes exist) comes first and is timed and reported apart. Both must agree on every count.

    .venv/bin/python bench/curate_filter.py [--rows 10000000] [--files 20] [--cpus 2]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from lumos.curation.web_filter import FilterBatch, WebFilterConfig, run_filter, sorted_parquet_files, write_kept
from lumos.floor.ray_runtime import init_ray
from lumos.schemas import web


def make_files(folder: str, rows: int, files: int, seed: int = 0) -> list[str]:
    """LAION improved-aesthetics-shaped files: about one row in eight passes the paper's filters."""
    rng = np.random.default_rng(seed)
    paths, per_file = [], -(-rows // files)
    for i in range(files):
        n = min(per_file, rows - i * per_file)
        idx = pa.array(np.arange(i * per_file, i * per_file + n)).cast(pa.string())
        table = pa.table(
            {
                "URL": pc.binary_join_element_wise("https://img.example.com/", idx, ".jpg", ""),
                "TEXT": pc.binary_join_element_wise("a photo of thing number ", idx, ""),
                "WIDTH": pa.array(rng.lognormal(6.3, 0.5, n).astype(np.int64)),
                "HEIGHT": pa.array(rng.lognormal(6.2, 0.5, n).astype(np.int64)),
                "similarity": pa.array(rng.uniform(0.28, 0.4, n)),
                "punsafe": pa.array(rng.beta(1, 20, n).astype(np.float32)),
                "pwatermark": pa.array(rng.beta(1, 6, n).astype(np.float32)),
                "AESTHETIC_SCORE": pa.array(rng.normal(5.0, 0.6, n).astype(np.float32)),
            }
        )
        path = os.path.join(folder, f"part-{i:03d}.parquet")
        pq.write_table(table, path, row_group_size=128 * 1024)
        paths.append(path)
    return paths


def bare_pyarrow(files, columns, config, work_dir, kept_dir):
    """The same filter in one process: read each file, filter it, write its block, then the same final pass."""
    blocks = os.path.join(work_dir, "blocks")
    os.makedirs(blocks)
    stage = FilterBatch(columns, config)
    for i, path in enumerate(files):
        pq.write_table(stage(pq.read_table(path, columns=columns.columns)), os.path.join(blocks, f"{i:05d}.parquet"))
    result = write_kept(sorted_parquet_files(blocks), kept_dir)
    shutil.rmtree(blocks)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--files", type=int, default=20)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    args = parser.parse_args()
    os.environ.setdefault("LANCE_LOG", "error")

    with tempfile.TemporaryDirectory(prefix="lumos-bench-") as tmp:
        t0 = time.perf_counter()
        os.makedirs(os.path.join(tmp, "in"))
        files = make_files(os.path.join(tmp, "in"), args.rows, args.files)
        print(f"made {args.rows:,} rows in {len(files)} files in {time.perf_counter() - t0:.1f}s")
        columns = web.detect("laion", pq.read_schema(files[0]).names)
        config = WebFilterConfig("laion", min_size=512, min_aesthetic=5.0, max_watermark=0.5, max_unsafe=0.5)

        # Start-up: Ray itself, then one small job so the worker processes exist and have imported pyarrow
        # and our stage; a long job pays this once.
        t0 = time.perf_counter()
        init_ray(num_cpus=args.cpus)
        run_filter(files[:1], columns, config, os.path.join(tmp, "warm"), os.path.join(tmp, "warm-kept"))
        startup_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        bare = bare_pyarrow(files, columns, config, os.path.join(tmp, "bare"), os.path.join(tmp, "bare-kept"))
        bare_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        ray_result = run_filter(files, columns, config, os.path.join(tmp, "ray"), os.path.join(tmp, "ray-kept"))
        ray_s = time.perf_counter() - t0

    same = (ray_result.rows, ray_result.kept, dict(ray_result.dropped)) == (bare.rows, bare.kept, dict(bare.dropped))
    print(f"rows {bare.rows:,}, kept {bare.kept:,}, dropped {dict(sorted(bare.dropped.items()))}")
    print(f"bare pyarrow, 1 process : {bare_s:8.2f} s  {args.rows / bare_s:12,.0f} rows/s")
    print(f"ray data, {args.cpus} cpus        : {ray_s:8.2f} s  {args.rows / ray_s:12,.0f} rows/s"
          f"   (ray start-up {startup_s:.2f} s, not included)")
    print(f"ratio ray/bare rows/s: {bare_s / ray_s:.2f}   (target >= 0.5)")
    print(f"same counts: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
