"""The trainer's start-up and epoch order: usable rows are found from the small `_ok` / length columns alone,
written once a run to a positions file every process maps, and each epoch's order is a seeded bijection
computed per step (no permutation of the table is held). Features tables are written here directly."""

import json
import os
import pickle
from collections import Counter

import lance
import numpy as np
import pyarrow as pa
import pytest

from lumos.floor.errors import UserError
from lumos.schemas import features
from lumos.schemas.images import ID
from lumos.trainer import data
from lumos.trainer.data import (POSITIONS_PREFIX, EpochOrder, FeatureColumns, open_positions, positions_file,
                                shuffled, valid_positions)
from lumos.trainer.held_back import hold_back

VAE, DINO, T5 = "tiny-vae", "tiny-dino", "tiny-t5"
LATENT, CLS, TOKEN_DIM = (4, 8, 8), 32, 16
I2I = FeatureColumns(features.mean_column(VAE), features.std_column(VAE), features.cls_column(DINO),
                     latents_ok=features.ok_column(VAE), cond_ok=features.ok_column(DINO))
T2I = FeatureColumns(features.mean_column(VAE), features.std_column(VAE), features.tokens_column(T5),
                     features.len_column(T5), latents_ok=features.ok_column(VAE))


def _states(n: int) -> dict:
    """Per row: VAE ok (True/False/None), DINO ok, T5 length (None / 0 / > 0), in cycles of coprime lengths."""
    vae = [[True, True, False, True, None][i % 5] for i in range(n)]
    dino = [[True, None, True, False, True, True, True][i % 7] for i in range(n)]
    t5 = [[3, None, 1, 0, 2, 5][i % 6] for i in range(n)]
    return {"vae": vae, "dino": dino, "t5": t5}


def _fixed(values: np.ndarray, shape, missing: list[bool]) -> pa.Array:
    return pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), int(np.prod(shape)), mask=pa.array(missing))


def _table(n: int, seed: int = 0, id_bytes: int = 8, ok_columns: bool = True) -> pa.Table:
    """A features table the way lumos-encode lays it out: payload null where the encoder did not store one."""
    rng = np.random.default_rng(seed)
    s = _states(n)
    latent = rng.standard_normal((n, *LATENT)).astype(np.float16)
    no_latent = [v is not True for v in s["vae"]]
    lengths = [v or 0 for v in s["t5"]]
    tokens = rng.standard_normal((sum(lengths), TOKEN_DIM)).astype(np.float16).reshape(-1)
    offsets = np.concatenate([[0], np.cumsum(lengths)]) * TOKEN_DIM
    columns = {
        ID: pa.array([f"{seed}-{i:06d}-" + rng.bytes(id_bytes // 2).hex() for i in range(n)]),  # incompressible
        features.mean_column(VAE): _fixed(latent, LATENT, no_latent),
        features.std_column(VAE): _fixed(np.abs(latent), LATENT, no_latent),
        features.cls_column(DINO): _fixed(rng.standard_normal((n, CLS)).astype(np.float16), (CLS,),
                                          [v is not True for v in s["dino"]]),
        features.tokens_column(T5): pa.LargeListArray.from_arrays(pa.array(offsets, pa.int64()), pa.array(tokens),
                                                                  mask=pa.array([not v for v in s["t5"]])),
        features.len_column(T5): pa.array(s["t5"], pa.int32()),
    }
    fields = [pa.field(ID, pa.string()), features.tensor_field(features.mean_column(VAE), LATENT),
              features.tensor_field(features.std_column(VAE), LATENT),
              features.tensor_field(features.cls_column(DINO), (CLS,)),
              features.token_list_field(features.tokens_column(T5), TOKEN_DIM),
              features.length_field(features.len_column(T5))]
    if ok_columns:
        columns[features.ok_column(VAE)] = pa.array(s["vae"], pa.bool_())
        columns[features.ok_column(DINO)] = pa.array(s["dino"], pa.bool_())
        fields += [features.ok_field(features.ok_column(VAE)), features.ok_field(features.ok_column(DINO))]
    meta = {features.META_ENCODER + VAE: json.dumps({"encoder": VAE, "scaling_factor": 0.18215}),
            features.META_ENCODER + DINO: json.dumps({"encoder": DINO}),
            features.META_ENCODER + T5: json.dumps({"encoder": T5})}
    return pa.table(list(columns.values()), schema=pa.schema(fields, metadata=meta))


def _write(path, n: int, mode: str = "create", rows_per_file: int = 37, **kw) -> str:
    lance.write_dataset(_table(n, **kw), str(path), mode=mode, max_rows_per_file=rows_per_file,
                        data_storage_version=features.STORAGE_VERSION)
    return str(path)


def _expected(n: int, columns: FeatureColumns) -> list[int]:
    s = _states(n)
    cond = [bool(v) for v in s["t5"]] if columns.length else [v is True for v in s["dino"]]
    return [i for i in range(n) if s["vae"][i] is True and cond[i]]


# --- the bijection ---

@pytest.mark.parametrize("n", [1, 2, 3, 7, 1000, 4097])
def test_each_epoch_order_is_a_permutation_computed_per_index(n):
    for seed, epoch in [(0, 0), (0, 1), (5, 0), (123, 7)]:
        full = shuffled(np.arange(n), n, seed, epoch)
        assert sorted(full.tolist()) == list(range(n))
        some = np.random.default_rng(n).integers(0, n, 50)  # any indices alone: the same answer as in full
        assert shuffled(some, n, seed, epoch).tolist() == full[some].tolist()


def test_the_order_changes_with_the_epoch_and_the_seed_only():
    n = 1000
    base = shuffled(np.arange(n), n, 3, 0)
    assert np.array_equal(base, shuffled(np.arange(n), n, 3, 0))
    others = [shuffled(np.arange(n), n, 3, 1), shuffled(np.arange(n), n, 4, 0), shuffled(np.arange(n), n, 3, 2)]
    for other in others:
        assert (other != base).mean() > 0.95
    assert (base == np.arange(n)).sum() < 10  # shuffled, not near the identity
    assert abs(np.corrcoef(base, np.arange(n))[0, 1]) < 0.15


# --- EpochOrder ---

def test_every_row_once_an_epoch_across_ranks_and_batch_sizes(tmp_path):
    for n in (1, 10, 46):
        np.save(tmp_path / "p.npy", np.arange(n, dtype=np.int64) * 3 + 1)
        positions = open_positions(str(tmp_path / "p.npy"))
        for world in (1, 2, 3):
            for batch in (1, 4, 7):
                orders = [EpochOrder(positions, batch, world, rank, seed=11) for rank in range(world)]
                assert orders[0].steps_per_epoch == -(-n // (batch * world))
                for epoch in (0, 1):
                    seen = Counter()
                    for step in range(orders[0].steps_per_epoch):
                        for o in orders:
                            rows, weight = o.rows(epoch, step)
                            assert np.all(np.diff(rows) >= 0) and 1 <= len(rows) <= batch
                            if weight.sum() == 0:  # a rank with no row left: one filler row of weight 0
                                assert len(rows) == 1 and step == o.steps_per_epoch - 1
                            else:
                                assert set(weight.tolist()) == {1.0}
                            seen.update(rows[weight > 0].tolist())
                    assert sorted(seen) == positions.tolist() and set(seen.values()) == {1}


def test_a_resumed_or_spawned_order_gives_the_same_rows(tmp_path):
    np.save(tmp_path / "p.npy", np.arange(500, dtype=np.int64) * 2)
    order = EpochOrder(open_positions(str(tmp_path / "p.npy")), 8, 3, 1, seed=5)
    state = pickle.dumps(order)
    assert len(state) < 2000  # the mapped file travels by its path, not its rows
    again = pickle.loads(state)
    assert isinstance(again.positions, np.memmap)
    for epoch, step in [(0, 0), (0, 20), (3, 7)]:  # any step, asked alone, in any order
        assert np.array_equal(again.rows(epoch, step)[0], order.rows(epoch, step)[0])
    assert np.array_equal(order.permutation(2), order.positions[shuffled(np.arange(500), 500, 5, 2)])


def test_held_back_rows_are_left_out_of_every_epoch():
    positions = np.arange(100, dtype=np.int64) * 7
    skip, held = hold_back(positions, 6, seed=2)
    assert len(held) == 6 and held.tolist() == positions[skip].tolist()
    assert np.array_equal(hold_back(positions, 6, seed=2)[0], skip)  # the same on every rank
    for world in (1, 3):
        orders = [EpochOrder(positions, 5, world, rank, seed=1, skip=skip) for rank in range(world)]
        assert orders[0].count == 94
        seen = Counter()
        for step in range(orders[0].steps_per_epoch):
            for o in orders:
                rows, weight = o.rows(0, step)
                seen.update(rows[weight > 0].tolist())
        assert sorted(seen) == sorted(set(positions.tolist()) - set(held.tolist())) and set(seen.values()) == {1}
    with pytest.raises(UserError, match="only 100 usable rows"):
        hold_back(positions, 100, seed=2)


# --- usable positions ---

@pytest.mark.parametrize("pack", [16, 40, data._PACK])  # rows packed at a time: across fragments, or not
def test_usable_positions_skip_rows_not_ok_or_without_tokens(tmp_path, monkeypatch, pack):
    monkeypatch.setattr(data, "_PACK", pack)
    n = 200  # 6 fragments of 37 rows
    uri = _write(tmp_path / "f.lance", n)
    for columns in (I2I, T2I):
        positions, skipped = valid_positions(uri, columns)
        assert positions.dtype == np.int64 and positions.tolist() == _expected(n, columns)
        assert skipped == n - len(positions) and 0 < len(positions) < n
        assert None not in lance.dataset(uri).take(positions, columns=columns.names()).to_pydict()[columns.cond]
        path = positions_file(uri, columns, str(tmp_path / "run"))[0]
        assert open_positions(path).tolist() == positions.tolist()
    i2i_only = FeatureColumns(I2I.mean, I2I.std, I2I.cond)  # `_ok` columns named after the payload beside them
    assert i2i_only.usable() == I2I.usable() == ["tiny_vae_ok", "tiny_dino_ok"]
    assert T2I.usable() == ["tiny_vae_ok", "tiny_t5_len"]


def test_a_table_without_ok_columns_asks_to_re_encode(tmp_path):
    uri = _write(tmp_path / "old.lance", 20, ok_columns=False)
    with pytest.raises(UserError, match="no tiny_vae_ok, tiny_dino_ok column.*re-encode") as err:
        valid_positions(uri, I2I)
    assert "\n" not in str(err.value)


def test_a_table_with_deleted_rows_is_refused(tmp_path):
    uri = _write(tmp_path / "d.lance", 50)
    lance.dataset(uri).delete(f"{features.len_column(T5)} = 0")
    with pytest.raises(UserError, match="deleted rows"):
        valid_positions(uri, T2I)


def test_usable_positions_read_no_payload_and_no_id(tmp_path):
    """Bytes read from storage: reading the small columns costs a sliver of the payload, or of the ids (in two
    files: each file read also costs its footer, a few KB)."""
    n = 4000
    uri = _write(tmp_path / "io.lance", n, rows_per_file=2000, id_bytes=200)  # ~0.8 MB of ids (hex), ~1 MB of means
    ds = lance.dataset(uri)
    for columns in (I2I, T2I):
        ds.io_stats_incremental()
        positions, _ = valid_positions(ds, columns)
        small = ds.io_stats_incremental().read_bytes
        assert positions.tolist() == _expected(n, columns)
        ds.to_table(columns=[ID])
        ids = ds.io_stats_incremental().read_bytes
        ds.to_table(columns=[columns.mean])
        payload = ds.io_stats_incremental().read_bytes
        assert ids > 400_000 and payload > 900_000  # the counter sees those reads (hex ids compress to half)
        assert small < min(ids, payload) / 20, (small, ids, payload)


def test_usable_positions_survive_losing_every_payload_file(tmp_path):
    """The small columns in data files of their own (as a column merge writes them): with the files holding
    the id and every payload deleted, usable positions are still found, and reading a payload fails."""
    n = 120
    table = _table(n)
    small = [features.ok_column(VAE), features.ok_column(DINO), features.len_column(T5)]
    uri = str(tmp_path / "split.lance")
    lance.write_dataset(table.drop_columns(small), uri, max_rows_per_file=37,
                        data_storage_version=features.STORAGE_VERSION)
    values = {c: table[c] for c in small}

    @lance.batch_udf()
    def add_small(batch):
        rows = [int(i.split("-")[1][:6]) for i in batch[ID].to_pylist()]
        return pa.record_batch([values[c].take(rows).combine_chunks() for c in small],
                               schema=pa.schema([table.schema.field(c) for c in small]))

    ds = lance.dataset(uri)
    ds.add_columns(add_small, read_columns=[ID])
    ds = lance.dataset(uri)
    small_ids = {ds.lance_schema.field(c).id() for c in small}
    removed = 0
    for fragment in ds.get_fragments():
        for data_file in fragment.metadata.files:
            if not small_ids & set(data_file.fields):
                os.remove(os.path.join(uri, "data", data_file.path))
                removed += 1
    assert removed == len(ds.get_fragments())
    with pytest.raises(Exception):
        lance.dataset(uri).to_table(columns=[features.mean_column(VAE)])
    with pytest.raises(Exception):
        lance.dataset(uri).to_table(columns=[ID])
    for columns in (I2I, T2I):
        assert valid_positions(uri, columns)[0].tolist() == _expected(n, columns)


# --- the positions file ---

def test_the_positions_file_is_written_once_and_redone_for_a_new_version(tmp_path):
    uri = _write(tmp_path / "f.lance", 100)
    run = str(tmp_path / "run")
    path, version, skipped = positions_file(uri, T2I, run)
    assert os.path.basename(path).startswith(f"{POSITIONS_PREFIX}{version}-") and path.endswith(".npy")
    assert open_positions(path).tolist() == _expected(100, T2I) and skipped == 100 - len(_expected(100, T2I))
    before = os.stat(path)
    assert positions_file(uri, T2I, run) == (path, version, skipped)  # a resumed run: the same file, untouched
    after = os.stat(path)
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert sorted(os.listdir(run)) == [os.path.basename(path)]  # no temporary file left

    i2i_path = positions_file(uri, I2I, str(tmp_path / "other"))[0]
    assert os.path.basename(i2i_path) != os.path.basename(path)  # the columns are part of the name

    _write(uri, 30, mode="append", seed=1)  # the table moves on: positions of the new version, the old file goes
    new_path, new_version, new_skipped = positions_file(uri, T2I, run)
    assert new_version == version + 1 and new_path != path and os.listdir(run) == [os.path.basename(new_path)]
    expected = _expected(100, T2I) + [100 + i for i in _expected(30, T2I)]
    assert open_positions(new_path).tolist() == expected and new_skipped == 130 - len(expected)
    assert positions_file(uri, T2I, run, version=version)[0] != new_path  # an older version: its own file


def test_a_table_made_anew_at_the_same_version_is_not_mistaken_for_the_old(tmp_path):
    uri, run = str(tmp_path / "f.lance"), str(tmp_path / "run")
    _write(uri, 60)
    first, version, _ = positions_file(uri, I2I, run)
    lance.write_dataset(_table(10), uri + ".tmp", data_storage_version=features.STORAGE_VERSION)
    os.rename(uri, uri + ".old")
    os.rename(uri + ".tmp", uri)
    second, again, _ = positions_file(uri, I2I, run)
    assert again == version and second != first
    assert open_positions(second).tolist() == _expected(10, I2I)


def test_a_run_maps_the_positions_and_reads_the_version_it_started_from(tmp_path):
    """Run start-up end to end: the file in the run folder, the order over it, batches from a spawned worker
    at the pinned version even after the table is overwritten."""
    from lumos.trainer.train import Run, TrainConfig

    n = 80
    uri = _write(tmp_path / "f.lance", n)
    ids = lance.dataset(uri).to_table(columns=[ID])[ID].to_pylist()
    config = TrainConfig.of(mode="i2i", data=uri, output=str(tmp_path / "run"), model="DiT-T/2", latents=VAE,
                         condition=DINO, precision="fp32", batch_size=4, workers=1, record_samples=True,
                         sample_every=5, sample_rows=2)
    run = Run(config, say=lambda *_: None)
    expected = _expected(n, I2I)
    assert isinstance(run.order.positions, np.memmap) and run.order.positions.tolist() == expected
    assert run.skipped == n - len(expected) and run.order.count == len(expected) - 2
    assert [f for f in os.listdir(config.checkpoint.output) if f.startswith(POSITIONS_PREFIX)]
    lance.write_dataset(_table(n, seed=9), uri, mode="overwrite", data_storage_version=features.STORAGE_VERSION)
    data = run.loader()
    usable_ids = {ids[i] for i in expected} - {ids[i] for i in run.held_back}
    for step in range(3):
        batch = next(data)
        assert batch["step"] == step and set(batch["ids"]) <= usable_ids and len(batch["ids"]) == 4
        assert batch["mean"].shape == (4, *LATENT)
    del data
