"""The data order when rows come in buckets (one aspect-ratio bin each, PixArt-style): every global step takes
its `batch × world` rows from one bucket, the same bucket on every rank, so that a step's latents share one
shape; every row is seen once an epoch; the order is a function of (seed, epoch) alone and is computed per
step, so resuming at step k needs only k.

An epoch has S = Σ_b ceil(n_b / (batch·world)) global steps, n_b the rows of bucket b. Step s of the epoch is
slot π(s) of a seeded bijection π on [0, S) (trainer/data.py's Feistel shuffle); slot → (bucket, chunk) by the
buckets' cumulative step counts. So each bucket is drawn in proportion to its size, and the steps of all
buckets are interleaved at random. Within a bucket, chunk k holds places [k·G, (k+1)·G) of a seeded bijection
of its rows (G = batch·world); rank r takes places r, r + world, ...; a rank left with no row in a bucket's
last chunk gets one row of that bucket with weight 0 (the ranks stay in step and the shapes agree).

Memory: the positions grouped by bucket (an array or a mapped file, as the positions file: written by
`write_grouped_positions` in two scans of the bucket column) and one count per bucket; nothing per row is built.
"""

from __future__ import annotations

import numpy as np

from lumos.trainer.data import mapped_state, positions_writer, shuffled, unmapped_state


class BucketOrder:
    """Which rows rank `rank` of `world` trains on at (epoch, step). `grouped`: the usable rows' positions,
    bucket after bucket (each bucket's rows together, in any order); `counts[b]`: how many rows bucket b has."""

    def __init__(self, grouped: np.ndarray, counts, batch_size: int, world: int = 1, rank: int = 0, seed: int = 0,
                 skip: np.ndarray | None = None):
        counts = np.asarray(counts, np.int64)
        if counts.sum() != len(grouped):
            raise ValueError(f"bucket counts add up to {int(counts.sum())}, not to the {len(grouped)} rows")
        self.grouped, self.batch_size, self.world, self.rank, self.seed = grouped, batch_size, world, rank, seed
        # `skip`: sorted indices into `grouped` of rows not to train on (the held-back rows); the kept rows of
        # bucket b are kept indices [offsets[b], offsets[b + 1]), mapped back to `grouped` as EpochOrder does
        self.skip = np.zeros(0, np.int64) if skip is None else np.asarray(skip, np.int64)
        self._before = self.skip - np.arange(len(self.skip))
        ends = np.cumsum(counts)
        self.counts = counts - np.bincount(np.searchsorted(ends, self.skip, side="right"), minlength=len(counts))
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)])  # where each bucket's kept rows start
        per_step = batch_size * world
        self.bucket_steps = -(-self.counts // per_step)  # ceil: a bucket's global steps an epoch
        self.step_ends = np.cumsum(self.bucket_steps)  # slot → bucket by searchsorted
        self.count = int(self.counts.sum())  # rows trained on an epoch

    def __getstate__(self):  # sent to spawned DataLoader workers: a mapped positions file by its path
        return mapped_state(self.__dict__, "grouped")

    def __setstate__(self, state):
        self.__dict__.update(unmapped_state(state, "grouped"))

    def _grouped_at(self, kept: np.ndarray) -> np.ndarray:
        if len(self.skip):
            kept = kept + np.searchsorted(self._before, kept, side="right")
        return np.asarray(self.grouped[kept], np.int64)

    @property
    def steps_per_epoch(self) -> int:
        return int(self.step_ends[-1]) if len(self.step_ends) else 0

    def bucket_at(self, epoch: int, step: int) -> tuple[int, int]:
        """(bucket, chunk within the bucket) of global step `step` of the epoch: the same on every rank."""
        if not 0 <= step < self.steps_per_epoch:
            raise ValueError(f"step {step} of an epoch of {self.steps_per_epoch} steps")
        slot = int(shuffled(np.array([step]), self.steps_per_epoch, self.seed, epoch)[0])
        bucket = int(np.searchsorted(self.step_ends, slot, side="right"))
        return bucket, slot - int(self.step_ends[bucket] - self.bucket_steps[bucket])

    def rows(self, epoch: int, step: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions, weights) of this rank's rows at this step, positions sorted (faster takes)."""
        bucket, chunk = self.bucket_at(epoch, step)
        n, start = int(self.counts[bucket]), int(self.offsets[bucket])
        size = self.batch_size * self.world
        places = np.arange(chunk * size + self.rank, min((chunk + 1) * size, n), self.world)
        if len(places) == 0:  # this bucket's last chunk has no row for this rank: a filler of the same bucket
            return self._grouped_at(np.array([start])), np.zeros(1, np.float32)
        # each bucket has its own bijection: the bucket's index is mixed into the seed
        within = shuffled(places, n, self.seed * 1_000_003 + bucket + 1, epoch)
        return np.sort(self._grouped_at(start + within)), np.ones(len(places), np.float32)

    def epoch_buckets(self, epoch: int) -> np.ndarray:
        """Every step's bucket in the epoch, in order: for tests and tools (S entries; training asks per step)."""
        slots = shuffled(np.arange(self.steps_per_epoch), self.steps_per_epoch, self.seed, epoch)
        return np.searchsorted(self.step_ends, slots, side="right")


def group_by_bucket(positions: np.ndarray, buckets: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(positions grouped by bucket, each group in table order; rows per bucket) from the usable rows'
    positions and their bucket ids in [0, count). In memory: for tools and tests; a run writes the grouped
    positions to its positions file the way trainer/data.py writes the plain ones."""
    buckets = np.asarray(buckets, np.int64)
    if len(buckets) and (buckets.min() < 0 or buckets.max() >= count):
        raise ValueError(f"bucket ids outside [0, {count})")
    order = np.argsort(buckets, kind="stable")
    return np.asarray(positions, np.int64)[order], np.bincount(buckets, minlength=count)


def write_grouped_positions(ds, bits: np.ndarray, column: str, count: int, path: str, chunk: int = 1 << 20) -> np.ndarray:
    """The usable rows' positions grouped by bucket (each group in table order) as a .npy file at `path`, from
    the usable-rows bitmap and the table's bucket column, in two scans of that small column: the first counts
    the rows of each bucket, the second writes each chunk's rows of a bucket at that bucket's place in the file
    (one positioned write a bucket a chunk). Memory: one chunk of rows and one count per bucket, whatever the
    table holds. Returns the counts."""
    import os

    def usable_buckets():
        start = 0
        for batch in ds.to_batches(columns=[column], scan_in_order=True, batch_size=chunk):
            n = batch.num_rows
            ok = _bits(bits, start, n)
            values = batch.column(0).to_numpy(zero_copy_only=False)
            yield start + np.flatnonzero(ok), values[ok].astype(np.int64)
            start += n

    counts = np.zeros(count, np.int64)
    for _, b in usable_buckets():
        counts += np.bincount(b, minlength=count)
    with positions_writer(path, int(counts.sum())) as f:
        header = f.tell()
        f.truncate(header + 8 * int(counts.sum()))
        cursor = header + 8 * np.concatenate([[0], np.cumsum(counts)[:-1]])
        for positions, b in usable_buckets():
            order = np.argsort(b, kind="stable")  # the chunk's rows bucket by bucket, each in table order
            grouped_b, grouped_p = b[order], positions[order].astype("<i8")
            edges = np.searchsorted(grouped_b, np.arange(count + 1))
            for bucket in np.flatnonzero(np.diff(edges)):
                part = grouped_p[edges[bucket]:edges[bucket + 1]]
                os.pwrite(f.fileno(), part.tobytes(), int(cursor[bucket]))
                cursor[bucket] += 8 * len(part)
    return counts


def _bits(bits: np.ndarray, start: int, n: int) -> np.ndarray:
    """Rows [start, start + n) of a packed usable-rows bitmap, as booleans."""
    first, last = start // 8, (start + n + 7) // 8
    return np.unpackbits(bits[first:last])[start - first * 8:start - first * 8 + n].astype(bool)

