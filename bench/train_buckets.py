"""Bucketed training's start-up and order at N and 30·N rows: does their cost per row stay flat?

A features table of N rows and one of 30·N (default 1M and 30M) holding only what a bucketed run reads at
start-up: the latents' `_ok` column (5% false), the condition's (all true) and the bucket column (PixArt's 33 bins at 256 px, drawn
unevenly). In a fresh process each, rank 0's work is timed: the usable-rows bitmap, then the positions file
grouped by bucket (two scans of the bucket column, trainer/buckets.py write_grouped_positions); with the
process's peak RSS by then. Then `BucketOrder.rows` for 2,000 global steps of 256 rows × 8 ranks (each rank asks its
own rows), from the mapped file. Printed: rows/s of the start-up, µs per step, peak RSS, and the 30·N / N
ratios.

Targets (the guide's scale rule): start-up rows/s ratio >= 0.8, step time ratio <= 1.25, start-up peak RSS
ratio <= 1.3. (The order reads the mapped file: its pages are the page cache's, shared by a node's processes.)

    .venv/bin/python bench/train_buckets.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("LANCE_LOG", "error")

BUCKETS = 33  # PixArt's bins at 256 px
SCALE = 30


def make_table(uri: str, rows: int, chunk: int = 1 << 20) -> None:
    import lance
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(0)
    weights = rng.dirichlet(np.full(BUCKETS, 0.5))  # uneven bins, as real aspect ratios are

    def batches():
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            yield pa.record_batch({"x_ok": pa.array(rng.random(n) >= 0.05), "c_ok": pa.array(np.ones(n, bool)),
                                   "x_bucket": pa.array(rng.choice(BUCKETS, n, p=weights).astype(np.int16))})

    schema = pa.schema([("x_ok", pa.bool_()), ("c_ok", pa.bool_()), ("x_bucket", pa.int16())])
    lance.write_dataset(pa.RecordBatchReader.from_batches(schema, batches()), uri, schema=schema,
                        max_rows_per_file=1 << 22)


def measure(uri: str, folder: str) -> dict:
    """In this (fresh) process: rank 0's start-up, then the per-step order."""
    import lance
    import numpy as np

    from lumos.trainer.buckets import BucketOrder, write_grouped_positions
    from lumos.trainer.data import FeatureColumns, _usable_bits, open_positions

    ds = lance.dataset(uri)
    columns = FeatureColumns("x_mean", "x_std", "c_cls", latents_ok="x_ok", cond_ok="c_ok")
    t0 = time.perf_counter()
    bits, total = _usable_bits(ds, columns)
    path = os.path.join(folder, "positions.npy")
    counts = write_grouped_positions(ds, bits, "x_bucket", BUCKETS, path)
    startup = time.perf_counter() - t0
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # rank 0's start-up
    positions = open_positions(path)
    orders = [BucketOrder(positions, counts, 256, 8, rank, seed=1) for rank in range(8)]
    steps = 2000
    t0 = time.perf_counter()
    for step in range(steps):
        epoch, in_epoch = divmod(step, orders[0].steps_per_epoch)
        for order in orders:
            order.rows(epoch, in_epoch)
    per_step = (time.perf_counter() - t0) / steps
    return {"rows": total, "usable": int(len(positions)), "startup_s": startup, "rows_per_s": total / startup,
            "step_us": per_step * 1e6, "peak_mb": peak_mb}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="N: rows of the small table (the large: 30·N)")
    parser.add_argument("--measure", nargs=2, metavar=("TABLE", "FOLDER"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(*args.measure)))
        return 0
    results = {}
    with tempfile.TemporaryDirectory() as work:
        for label, rows in (("N", args.rows), ("30·N", SCALE * args.rows)):
            uri = os.path.join(work, f"{label}.lance")
            make_table(uri, rows)
            folder = os.path.join(work, f"{label}-run")
            os.makedirs(folder)
            out = subprocess.run([sys.executable, __file__, "--measure", uri, folder], capture_output=True,
                                 text=True)
            if out.returncode:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            results[label] = json.loads(out.stdout.strip().splitlines()[-1])
            r = results[label]
            print(f"{label:>5}: {r['rows']:>11,} rows ({r['usable']:,} usable): start-up {r['startup_s']:.2f} s "
                  f"({r['rows_per_s']:,.0f} rows/s), order {r['step_us']:.0f} µs a global step (8 ranks), "
                  f"peak RSS {r['peak_mb']:.0f} MB")
    small, large = results["N"], results["30·N"]
    checks = [("start-up rows/s ratio >= 0.8", large["rows_per_s"] / small["rows_per_s"], 0.8, True),
              ("step time ratio <= 1.25", large["step_us"] / small["step_us"], 1.25, False),
              ("peak RSS ratio <= 1.3", large["peak_mb"] / small["peak_mb"], 1.3, False)]
    ok = True
    for name, value, target, higher in checks:
        passed = value >= target if higher else value <= target
        ok &= passed
        print(f"{name}: {value:.2f} {'ok' if passed else 'MISSED'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
