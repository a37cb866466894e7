"""Group rows by a key on the cluster in few large groups, not one group a key.

Ray Data's `groupby(key).map_groups(fn)` calls `fn` once per distinct key, and each call costs milliseconds
of Ray's own work (measured: 40k keys through two such groupbys took 229 s on 2 cores). So the rows are
grouped by a *bucket* of the key instead, the first hex digits of a hash of it, sized to ~BUCKET_ROWS rows:
every copy of a key meets in its bucket (Ray Data shuffles by bucket), and the function sees a whole bucket,
sorted by key, at once. `per_key(fn)` turns a function of one key's rows into a function of a bucket.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lumos.floor.stages import Stage, run_stage

BUCKET = "key_bucket"
BUCKET_ROWS = 1_000_000  # rows of a bucket, about: a worker holds one a few times over


def bucket_digits(rows: int) -> int:
    """The fewest hex digits (at least 1) that bring a bucket to about BUCKET_ROWS rows."""
    return max(1, math.ceil(math.log(max(rows, 1) / BUCKET_ROWS, 16) - 1e-9))


@dataclass
class Bucket(Stage):
    """Ray stage: the bucket of each row's `key`: its first `digits` hex digits when the key is a hash
    already (`hashed`: ids, sha256), else those of its CRC-32."""

    key: str
    digits: int
    hashed: bool = False

    def __call__(self, batch: pa.Table) -> pa.Table:
        keys = batch[self.key]
        if self.hashed:
            buckets = pc.utf8_slice_codeunits(keys, 0, self.digits)
        else:
            buckets = pa.array([f"{zlib.crc32(k.encode('utf-8', 'surrogatepass')):08x}"[: self.digits]
                                for k in keys.to_pylist()], pa.string())
        return batch.append_column(BUCKET, buckets)


def groupby(ds, keys):
    """Ray Data's groupby on the hash shuffle, for few groups (units, buckets: one map_groups call a group).

    Why the hash shuffle: the sort shuffle's driver grows with the blocks it shuffles (measured: ~1.5 MB a
    block, 221 → 726 MB for 300 blocks), the hash shuffle's stays flat (224 → 225 MB). Its aggregator actors
    are given no CPU of their own (`hash_shuffle_operator_actor_num_cpus_override = 0`): by default each takes a
    fraction of a CPU, and on a cluster of 1-CPU nodes that left no node a whole CPU for the map tasks and the
    job hung. They work only once the map side is done (the shuffle ends a stage), so they take no CPU from
    the tasks that feed them."""
    from ray.data.context import ShuffleStrategy

    ds.context.shuffle_strategy = ShuffleStrategy.HASH_SHUFFLE
    ds.context.hash_shuffle_operator_actor_num_cpus_override = 0
    return ds.groupby(keys)


def by_bucket(ds, key: str, rows: int, fn, hashed: bool = False):
    """`fn` (a table of whole buckets in, a table out) applied after a shuffle by the bucket of `key`; `rows`
    sizes the buckets (an estimate is fine)."""
    ds = run_stage(ds, Bucket(key, min(bucket_digits(rows), 8), hashed))
    return groupby(ds, BUCKET).map_groups(lambda group: fn(group.drop_columns([BUCKET])), batch_format="pyarrow")


def per_key(fn, key: str, schema: pa.Schema):
    """A bucket function from `fn`, a function of all the rows of one key: the bucket is sorted by key and
    `fn` called on each key's slice (zero-copy); the outputs are concatenated (`schema` when there are none)."""

    def each(bucket: pa.Table) -> pa.Table:
        bucket = bucket.sort_by([(key, "ascending")])
        keys = bucket[key].combine_chunks()
        starts = np.flatnonzero(np.concatenate([[True], pc.not_equal(keys.slice(1), keys.slice(0, len(keys) - 1))
                                                .fill_null(True).to_numpy(zero_copy_only=False)])) if len(keys) else []
        ends = list(starts[1:]) + [len(keys)]
        parts = [fn(bucket.slice(s, e - s)) for s, e in zip(starts, ends)]
        parts = [p for p in parts if p.num_rows]
        return pa.concat_tables(parts) if parts else schema.empty_table()

    return each
