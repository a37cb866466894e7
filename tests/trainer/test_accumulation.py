"""--global-batch: an optimizer step of G rows in G / (batch × ranks) forward passes equals the one-pass step
of G rows up to float rounding (the same rows, the same draws), and impossible sizes are refused in one line."""

import json

import pytest

from lumos.floor.errors import UserError
from lumos.trainer import checkpoint as ckpt
from lumos.trainer.train import TrainConfig, run_training

# eps 1e-8, not PixArt's 1e-10: with a tinier eps, Adam turns the float rounding of near-zero gradients into
# whole-lr steps of either sign, and the two runs would differ by the optimizer, not by the accumulation.
TINY = dict(mode="i2i", model="DiT-T/2", latents="tiny-vae", condition="tiny-dino", precision="fp32", lr=1e-3,
            warmup=2, workers=0, ema=0.9, log_every=1, grad_clip=0.0, eps=1e-8)


def _run(data, output, **kw):
    run_training(TrainConfig.of(data=data, output=str(output), steps=4, save_every=4, **TINY, **kw), say=lambda *_: None)
    losses = [json.loads(line)["loss"] for line in open(output / "metrics.jsonl")]
    path = ckpt.latest(str(output))
    return losses, ckpt.read_weights(path, "model"), ckpt.read_config(path)


def test_accumulated_steps_equal_the_large_batch_step(feature_table, tmp_path):
    big, big_weights, _ = _run(feature_table, tmp_path / "big", batch_size=8)
    small, small_weights, config = _run(feature_table, tmp_path / "small", batch_size=2, global_batch=8)
    assert config["train"]["data"]["global_batch"] == 8
    assert max(abs(a - b) for a, b in zip(big, small)) < 1e-5, (big, small)
    worst = max(float((big_weights[k] - small_weights[k]).abs().max()) for k in big_weights)
    assert worst < 1e-5, worst
    # the check can fail: a run of 2-row steps (no accumulation) moves elsewhere
    other, other_weights, _ = _run(feature_table, tmp_path / "other", batch_size=2)
    assert max(float((big_weights[k] - other_weights[k]).abs().max()) for k in big_weights) > 1e-3


def test_impossible_global_batches_are_refused_in_one_line(feature_table, tmp_path):
    for batch, global_batch, message in ((4, 10, "must be a multiple of --batch-size × ranks (4 × 1 = 4)"),
                                         (8, 4, "must be >= --batch-size (8)")):
        with pytest.raises(UserError, match=r"--global-batch") as err:
            _run(feature_table, tmp_path / f"r{batch}", batch_size=batch, global_batch=global_batch)
        assert message in str(err.value) and "\n" not in str(err.value)
