"""--arch lumos trains on the test encoders (issue 16, acceptance 2): the loss falls, the VLB term is logged,
a resumed run logs the uninterrupted run's losses; it samples from its ε half; lumos-export refuses it in one
line (PixArtAlphaPipeline has no per-block adaLN), --arch pixart exporting as before (test_export.py)."""

import json

import pytest
import torch

from lumos.floor.errors import UserError
from lumos.generation.export import export
from lumos.generation.sampler import generate, load_trained
from lumos.trainer.train import TrainConfig, run_training

TINY = dict(model="DiT-T/2", arch="lumos", latents="tiny-vae", condition="tiny-dino", precision="fp32", batch_size=8,
            lr=1e-3, warmup=5, workers=0, log_every=5, save_every=20)


def _rows(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_lumos_arch_trains_logs_its_bound_resumes_and_samples(feature_table, tmp_path):
    whole = tmp_path / "whole"
    run_training(TrainConfig.of(mode="i2i", data=feature_table, output=str(whole), steps=100, **TINY),
                 say=lambda *_: None)
    rows = _rows(whole)
    assert all("vlb" in r and r["vlb"] > 0 for r in rows)  # the bound is logged, part of the loss
    first, last = sum(r["loss"] for r in rows[:2]) / 2, sum(r["loss"] for r in rows[-2:]) / 2
    assert last < 0.8 * first, (first, last)
    split = tmp_path / "split"
    run_training(TrainConfig.of(mode="i2i", data=feature_table, output=str(split), steps=40, **TINY),
                 say=lambda *_: None)
    run_training(TrainConfig.of(mode="i2i", data=feature_table, output=str(split), steps=100, resume=True, **TINY),
                 say=lambda *_: None)
    a, b = {r["step"]: r["loss"] for r in rows}, {r["step"]: r["loss"] for r in _rows(split)}
    assert sorted(a) == sorted(b) and max(abs(a[s] - b[s]) for s in a) <= 1e-6
    trained = load_trained(str(whole))
    assert trained.model.transformer.config.out_channels == 8 and trained.model.null.shape == (1, 64)
    latents = generate(trained.model, torch.randn(2, 1, 64), None, latent_shape=trained.latent_shape, steps=3)
    assert latents.shape == (2, 4, 32, 32) and torch.isfinite(latents).all()
    with pytest.raises(UserError, match="is an --arch lumos run: its per-block adaLN has no place"):
        export(str(whole), str(tmp_path / "export"), say=lambda *_: None)
