"""`lumos-train t2i --caption short|long|mix` (issue 15, item 4): under mix each sample takes its long caption
with the given chance, drawn by (seed, epoch, row) alone; a row lacking one caption takes the other; only the
chosen caption's tokens are read."""

import json

import lance
import numpy as np
import pytest
from train_cases import LONG, ROWS

from lumos.schemas import features
from lumos.trainer.data import EpochOrder, FeatureColumns, FeatureStream, take_long, valid_positions
from lumos.trainer.train import TrainConfig, columns_and_provenance, run_training

T5 = "tiny-t5"
TINY = dict(model="DiT-T/2", latents="tiny-vae", text=T5, precision="fp32", batch_size=4, workers=0)


def _columns(feature_table, caption, share=0.5):
    config = TrainConfig.of("t2i", data=feature_table, output="", caption=caption, caption_mix=share, **TINY)
    meta = features.str_metadata(lance.dataset(feature_table).schema.metadata)
    return columns_and_provenance(config, meta)[0]


def test_each_caption_setting_uses_the_rows_that_have_it(feature_table):
    counts = {caption: len(valid_positions(feature_table, _columns(feature_table, caption))[0])
              for caption in ("short", "long", "mix")}
    assert counts == {"short": ROWS - 1, "long": len(LONG), "mix": ROWS}, counts


def _lengths(short, long):
    """A stand-in for a taken Arrow table: its two length columns."""
    import pyarrow as pa

    return pa.table({"s": pa.array(short), "l": pa.array(long)})


def test_the_mix_draw_is_seeded_per_row_and_has_the_asked_share():
    n = 200_000
    short, long_ = np.ones(n, np.int64), np.ones(n, np.int64)
    cols = FeatureColumns("m", "s_", "tok", "s", long_cond="ltok", long_length="l", long_share=0.3)
    positions = np.arange(n, dtype=np.int64) * 7
    long = take_long(_lengths(short, long_), cols, positions, seed=1, epoch=0)
    assert abs(long.mean() - 0.3) < 0.005
    assert np.array_equal(long, take_long(_lengths(short, long_), cols, positions, seed=1, epoch=0))
    part = slice(1000, 2000)  # a row's draw does not depend on the other rows of its batch
    assert np.array_equal(long[part], take_long(_lengths(short[part], long_[part]), cols, positions[part], 1, 0))
    other = take_long(_lengths(short, long_), cols, positions, seed=1, epoch=1)
    assert 0.3 < (long != other).mean() < 0.5  # a new draw every epoch (2 · 0.3 · 0.7 = 0.42 expected)
    short[:10], long_[10:20] = 0, 0  # no short caption: long; no long caption: short
    forced = take_long(_lengths(short, long_), cols, positions, seed=1, epoch=0)
    assert forced[:10].all() and not forced[10:20].any()
    assert not take_long(_lengths(short, long_), cols, positions, seed=1, epoch=None)[10:].any()  # short where it can


def test_a_mixed_batch_holds_each_rows_chosen_caption(feature_table):
    ds = lance.dataset(feature_table)
    cols = _columns(feature_table, "mix", share=0.5)
    positions, _ = valid_positions(ds, cols)
    order = EpochOrder(positions, batch_size=ROWS, seed=3)
    stream = FeatureStream(feature_table, cols, order)
    short, long = (ds.to_table(columns=[c]) for c in (cols.length, cols.long_length))
    short, long = short[cols.length].to_numpy(zero_copy_only=False), long[cols.long_length].to_numpy(zero_copy_only=False)
    seen_long = set()
    for epoch in range(4):
        batch = stream.load(ds, epoch, epoch, 0)
        rows, _ = order.rows(epoch, 0)
        table = ds.take(rows, columns=[cols.length, cols.long_length])
        chosen = take_long(table, cols, rows, 3, epoch)
        lengths = batch["mask"].sum(1).numpy()
        for k, (p, use_long) in enumerate(zip(rows, chosen)):
            assert lengths[k] == (long[p] if use_long else short[p])
            source = cols.long_cond if use_long else cols.cond
            stored = ds.take([int(p)], columns=[source])[source].combine_chunks().flatten().to_numpy(
                zero_copy_only=False).reshape(lengths[k], -1)
            assert np.array_equal(batch["cond"][k, :lengths[k]].numpy(), stored)
            if use_long and short[p] > 0:
                seen_long.add(int(p))
        assert batch["cond"].shape[0] == ROWS
        assert chosen[short[rows] == 0].all()  # row 3: only a long caption
    assert seen_long  # rows with both captions took the long one in some epoch


def test_a_mixed_run_trains_and_records_its_share(feature_table, tmp_path):
    run = tmp_path / "run"
    run_training(TrainConfig.of("t2i", data=feature_table, output=str(run), caption="mix", caption_mix=0.25,
                                steps=3, log_every=1, **TINY), say=lambda *_: None)
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["data"]["caption"] == "mix" and config["train"]["data"]["caption_mix"] == 0.25
    assert config["columns"]["long_share"] == 0.25
    losses = [json.loads(line)["loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 3 and all(np.isfinite(losses))


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_an_impossible_share_is_refused(feature_table, tmp_path, share):
    from lumos.floor.errors import UserError

    with pytest.raises(UserError, match=f"--caption-mix {share}: must be in"):
        run_training(TrainConfig.of("t2i", data=feature_table, output=str(tmp_path / "r"), caption="mix",
                                    caption_mix=share, **TINY), say=lambda *_: None)
