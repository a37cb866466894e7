"""The trainer's data path: is training ever waiting on Lance?

1. The loader alone: I2I rows a second (sd-vae mean + std, dino-b CLS: 17.5 KB a row) through the
   trainer's FeatureStream and a DataLoader, batch 256, shuffled takes; in-process and with spawned workers.
   Target >= 20,000 rows/s on 2 cores.
2. Steps/s of the real training step (DiT-S/2, CPU, fp32) fed by the DataLoader streaming from Lance
   against the same steps fed by the same batches already in memory. Target ratio >= 0.95.

    .venv/bin/python bench/train_loader.py [--rows 50000] [--steps 20] [--batch 8]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(__file__))
os.environ.setdefault("LANCE_LOG", "error")

from train_data import i2i_features_table  # noqa: E402

from lumos.trainer.data import EpochOrder, FeatureStream  # noqa: E402
from lumos.trainer.train import Run, TrainConfig  # noqa: E402


def loader_rows_per_s(run: Run, batch: int, batches: int, workers: int) -> float:
    from torch.utils.data import DataLoader

    order = EpochOrder(run.order.positions, batch, seed=1)
    stream = FeatureStream(run.config.data.table, run.columns, order)
    loader = iter(DataLoader(stream, batch_size=None, num_workers=workers,
                             multiprocessing_context="spawn" if workers else None,
                             prefetch_factor=4 if workers else None))
    for _ in range(max(workers, 1) * 2):  # warm-up: spawn the workers, open the table
        next(loader)
    t0 = time.perf_counter()
    rows = sum(len(next(loader)["weight"]) for _ in range(batches))
    rate = rows / (time.perf_counter() - t0)
    del loader  # stops the workers now, not at interpreter exit
    return rate


def compare_steps(run: Run, steps: int, rounds: int = 4) -> tuple[float, float]:
    """Steps/s fed from memory and from the streaming loader, timed in alternating rounds (noisy machines)."""
    stream = run.loader()
    cached = [next(stream) for _ in range(steps // rounds)]
    for batch in cached[:2]:  # warm-up steps (allocator, autograd graph)
        run.train_step(batch)
    memory_s = streamed_s = 0.0
    for _ in range(rounds):
        t0 = time.perf_counter()
        for batch in cached:
            run.train_step(batch)
        memory_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in cached:
            run.train_step(next(stream))
        streamed_s += time.perf_counter() - t0
    n = rounds * len(cached)
    return n / memory_s, n / streamed_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=50000)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for the training comparison "
                        "(0: the main process loads, with its two loader threads)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="lumos-bench-") as tmp:
        data = i2i_features_table(os.path.join(tmp, "features.lance"), args.rows)
        base = dict(mode="i2i", data=data, model="DiT-S/2", precision="fp32", lr=1e-4, warmup=1)
        loader_run = Run(TrainConfig.of(output=os.path.join(tmp, "loader"), batch_size=256, **base))
        alone = {w: loader_rows_per_s(loader_run, 256, 100, w) for w in (0, 2)}

        run = Run(TrainConfig.of(output=os.path.join(tmp, "run"), batch_size=args.batch, workers=args.workers, **base))
        in_memory, streamed = compare_steps(run, args.steps)

    print(f"loader alone, I2I rows (17.5 KB), batch 256, shuffled: {alone[0]:,.0f} rows/s in-process, "
          f"{alone[2]:,.0f} rows/s with 2 spawned workers (target >= 20,000 on 2 cores)")
    print(f"DiT-S/2 fp32 CPU training, batch {args.batch}, {args.steps} steps each way, in alternating rounds:")
    print(f"  batches already in memory          : {in_memory:.3f} steps/s")
    print(f"  streamed from Lance ({args.workers} worker{'s' if args.workers != 1 else ''})   : {streamed:.3f} steps/s")
    print(f"ratio streamed/in-memory: {streamed / in_memory:.3f}   (target >= 0.95)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
