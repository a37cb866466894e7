"""The bucketed data order (issue 15, item 2, its trainer half): every global step from one bucket, the same
on every rank; every row once an epoch; a function of (seed, epoch); buckets drawn in proportion to their
size; a bucket's last chunk padded with weight-0 rows of the same bucket."""

import numpy as np
import pytest

from lumos.trainer.buckets import BucketOrder, group_by_bucket

COUNTS = [37, 0, 5, 120, 1, 64]  # an empty bucket, one of a single row, uneven sizes


def _table(seed=0):
    """Usable positions (gaps: unusable rows) and a bucket id for each."""
    rng = np.random.default_rng(seed)
    positions = np.sort(rng.choice(1000, sum(COUNTS), replace=False))
    buckets = rng.permutation(np.repeat(np.arange(len(COUNTS)), COUNTS))
    return positions, buckets


def _orders(batch, world, seed=0):
    positions, buckets = _table()
    grouped, counts = group_by_bucket(positions, buckets, len(COUNTS))
    bucket_of = dict(zip(positions.tolist(), buckets.tolist()))
    return [BucketOrder(grouped, counts, batch, world, rank, seed) for rank in range(world)], bucket_of


@pytest.mark.parametrize("batch,world", [(4, 1), (3, 2), (8, 4)])
def test_every_step_is_one_bucket_on_every_rank_and_every_row_is_seen_once(batch, world):
    orders, bucket_of = _orders(batch, world)
    steps = orders[0].steps_per_epoch
    assert steps == sum(-(-n // (batch * world)) for n in COUNTS)  # each bucket's steps, rounded up
    for epoch in range(3):
        seen = []
        for step in range(steps):
            parts = [o.rows(epoch, step) for o in orders]
            step_buckets = {bucket_of[p] for positions, _ in parts for p in positions.tolist()}
            assert len(step_buckets) == 1, (epoch, step, step_buckets)  # one shape for the whole step
            assert {orders[r].bucket_at(epoch, step)[0] for r in range(world)} == step_buckets
            for positions, weights in parts:
                assert len(positions) <= batch and np.all(np.diff(positions) > 0)
                seen += positions[weights > 0].tolist()
        assert sorted(seen) == sorted(bucket_of), epoch  # every row once, no row twice


def test_buckets_are_drawn_in_proportion_and_interleaved():
    orders, _ = _orders(4, 1)
    drawn = orders[0].epoch_buckets(0)
    assert np.bincount(drawn, minlength=len(COUNTS)).tolist() == [10, 0, 2, 30, 1, 16]  # ceil(n / 4)
    assert [orders[0].bucket_at(0, s)[0] for s in range(len(drawn))] == drawn.tolist()
    runs = 1 + np.count_nonzero(np.diff(drawn))
    assert runs > 20  # interleaved, not bucket after bucket (59 steps, 5 buckets)


def test_the_order_is_a_function_of_seed_and_epoch():
    (a,), _ = _orders(4, 1, seed=3)
    (b,), _ = _orders(4, 1, seed=3)
    (c,), _ = _orders(4, 1, seed=4)
    steps = a.steps_per_epoch
    epoch0 = [a.rows(0, s)[0].tolist() for s in range(steps)]
    assert epoch0 == [b.rows(0, s)[0].tolist() for s in range(steps)]  # a new process (resume) agrees
    assert epoch0[17:] == [b.rows(0, s)[0].tolist() for s in range(17, steps)]  # starting mid-epoch too
    assert epoch0 != [a.rows(1, s)[0].tolist() for s in range(steps)]  # the next epoch differs
    assert epoch0 != [c.rows(0, s)[0].tolist() for s in range(steps)]  # another seed differs


def test_a_short_last_chunk_pads_with_a_weightless_row_of_its_bucket():
    orders, bucket_of = _orders(3, 4)  # the one-row bucket: one rank gets it, three get a filler
    single = next(p for p, b in bucket_of.items() if b == 4)
    step = next(s for s in range(orders[0].steps_per_epoch) if orders[0].bucket_at(0, s)[0] == 4)
    parts = [o.rows(0, step) for o in orders]
    assert [w.tolist() for _, w in parts] == [[1.0], [0.0], [0.0], [0.0]]
    assert all(p.tolist() == [single] for p, _ in parts)


def test_it_reads_a_mapped_positions_file(tmp_path):
    positions, buckets = _table()
    grouped, counts = group_by_bucket(positions, buckets, len(COUNTS))
    np.save(tmp_path / "grouped.npy", grouped)
    mapped = np.load(tmp_path / "grouped.npy", mmap_mode="r")
    a, b = BucketOrder(grouped, counts, 4), BucketOrder(mapped, counts, 4)
    assert all(np.array_equal(a.rows(2, s)[0], b.rows(2, s)[0]) for s in range(a.steps_per_epoch))
    with pytest.raises(ValueError, match="add up to"):
        BucketOrder(grouped[:-1], counts, 4)


def test_held_back_rows_are_skipped_and_the_rest_seen_once():
    positions, buckets = _table()
    grouped, counts = group_by_bucket(positions, buckets, len(COUNTS))
    skip = np.array([0, 3, 40, 41, 100, 226])  # places in `grouped`: buckets 0, 0, 2, 2, 3, 5
    orders = [BucketOrder(grouped, counts, 3, 2, rank, seed=1, skip=skip) for rank in range(2)]
    assert orders[0].counts.tolist() == [35, 0, 3, 119, 1, 63]
    seen = []
    for step in range(orders[0].steps_per_epoch):
        for positions_r, weights in (o.rows(0, step) for o in orders):
            seen += positions_r[weights > 0].tolist()
    assert sorted(seen) == sorted(set(grouped.tolist()) - set(grouped[skip].tolist()))


def test_the_grouped_positions_file_is_written_in_chunks_as_grouped_in_memory(tmp_path, ray_session):
    """`write_grouped_positions` streams the bucket column (here 7 rows at a time) and gives the same file as
    grouping in memory, unusable rows left out."""
    import lance
    import pyarrow as pa

    from lumos.trainer.buckets import write_grouped_positions

    rng = np.random.default_rng(3)
    n = 203
    buckets = rng.integers(0, 6, n).astype(np.int16)
    usable = rng.random(n) < 0.7
    uri = str(tmp_path / "t.lance")
    lance.write_dataset(pa.table({"b": buckets}), uri, max_rows_per_file=50)  # several fragments
    path = str(tmp_path / "grouped.npy")
    counts = write_grouped_positions(lance.dataset(uri), np.packbits(usable), "b", 6, path, chunk=7)
    grouped, want = group_by_bucket(np.flatnonzero(usable), buckets[usable], 6)
    assert counts.tolist() == want.tolist() and np.load(path).tolist() == grouped.tolist()


def test_a_step_past_the_epoch_is_refused_not_walked_forever():
    orders, _ = _orders(4, 1)
    with pytest.raises(ValueError, match="step 59 of an epoch of 59 steps"):
        orders[0].rows(0, orders[0].steps_per_epoch)
