"""`torchrun --nproc_per_node 2` on CPU (gloo): every epoch covers every row exactly once across ranks and
workers, the run ends cleanly, and a resumed torchrun run logs the losses of the uninterrupted one."""

import json
import os
import socket
import subprocess
import sys
from collections import Counter

import lance
import numpy as np

from lumos.trainer import checkpoint as ckpt
from lumos.trainer.data import EpochOrder, FeatureColumns, valid_positions
from lumos.schemas import features

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
ARGS = ["--model", "DiT-T/2", "--latents", "tiny-vae", "--condition", "tiny-dino", "--precision", "fp32",
        "--batch-size", "5", "--lr", "1e-3", "--warmup", "5", "--log-every", "1", "--save-every", "4"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(data, output, steps, *extra):
    cmd = [TORCHRUN, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "lumos.generation.train_cli", "i2i", "--data", data,
           "--output", str(output), "--steps", str(steps), *ARGS, *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _records(run, rank):
    with open(os.path.join(run, f"samples-rank{rank}.jsonl")) as f:
        return [json.loads(line) for line in f]


def test_two_ranks_cover_every_row_once_an_epoch_and_resume(feature_table, tmp_path):
    rows = lance.dataset(feature_table).count_rows()  # 24 rows, 10 a step: 3 steps an epoch, the last uneven
    steps = 9  # three epochs
    run = tmp_path / "ddp"
    _torchrun(feature_table, run, steps, "--workers", "2", "--record-samples")
    by_epoch: dict[int, Counter] = {}
    for rank in (0, 1):
        records = _records(str(run), rank)
        assert [r["step"] for r in records] == list(range(1, steps + 1))  # same number of steps on each rank
        for r in records:
            by_epoch.setdefault(r["epoch"], Counter()).update(r["ids"])
    all_ids = set(lance.dataset(feature_table).to_table(columns=["id"])["id"].to_pylist())
    assert sorted(by_epoch) == [0, 1, 2]
    for seen in by_epoch.values():
        assert set(seen) == all_ids and set(seen.values()) == {1} and len(seen) == rows  # once, none missing
    assert [s for s, _ in ckpt.list_checkpoints(str(run))] == [4, 8, 9]
    assert sorted(os.listdir(ckpt.latest(str(run))))[-3:] == ["rng-rank0.pt", "rng-rank1.pt", "state.pt"]

    split = tmp_path / "split"
    _torchrun(feature_table, split, 4, "--workers", "0")
    _torchrun(feature_table, split, steps, "--workers", "0", "--resume")

    def losses(path):
        with open(os.path.join(path, "metrics.jsonl")) as f:
            return {r["step"]: r["loss"] for r in map(json.loads, f)}

    a, b = losses(str(run)), losses(str(split))
    assert sorted(b) == list(range(1, steps + 1))
    assert max(abs(a[s] - b[s]) for s in range(5, steps + 1)) <= 1e-6


def test_epoch_order_splits_steps_across_ranks_without_gaps():
    positions = np.arange(0, 46, dtype=np.int64) * 3  # any positions
    for world in (1, 2, 3):
        orders = [EpochOrder(positions, 4, world, rank, seed=7) for rank in range(world)]
        assert len({o.steps_per_epoch for o in orders}) == 1
        for epoch in (0, 1):
            seen = Counter()
            for step in range(orders[0].steps_per_epoch):
                parts = [o.rows(epoch, step) for o in orders]
                for rows, weight in parts:
                    seen.update(rows[weight > 0].tolist())
            assert sorted(seen) == positions.tolist() and set(seen.values()) == {1}
        assert not np.array_equal(orders[0].permutation(0), orders[0].permutation(1))  # reshuffled each epoch


def test_rows_without_the_needed_columns_are_skipped(feature_table):
    columns = FeatureColumns(features.mean_column("tiny-vae"), features.std_column("tiny-vae"),
                             features.tokens_column("tiny-t5"), features.len_column("tiny-t5"))
    positions, skipped = valid_positions(feature_table, columns)
    lengths = lance.dataset(feature_table).to_table(columns=[columns.length])[columns.length].to_pylist()
    assert skipped == 1 and positions.tolist() == [i for i, n in enumerate(lengths) if n is not None]
