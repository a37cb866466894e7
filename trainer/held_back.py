"""`lumos-train --sample-every N`: a few rows of the features table are held back from training, and every N
steps the EMA model samples from their conditions into RUN/samples/step-NNNNNNN.png: each row is the VAE's
reconstruction of the held-back image, then SAMPLES samples from its DINO features (I2I) or caption (T2I).

The conditions come from the features table (no condition encoder runs); only the VAE's decoder is loaded,
on rank 0, the first time a grid is written. The noise is the same at every step, so grids compare.
"""

from __future__ import annotations

import json
import os

import numpy as np
import torch
import torch.nn.functional as F

from lumos.floor.errors import UserError
from lumos.schemas.images import ID
from lumos.trainer.data import FeatureColumns, as_tokens, read_fixed, read_padded

SAMPLES = 4  # per held-back row
STEPS, CFG, SCHEDULER = 20, 4.5, "dpm"


def hold_back(positions: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted indices into `positions` of the `count` held-back rows, for EpochOrder's `skip`; their
    positions), drawn by the seed alone: the same on every rank. O(count): `positions` is not copied."""
    if count >= len(positions):
        raise UserError(f"--sample-rows {count}: the table has only {len(positions)} usable rows")
    picked = np.sort(np.random.default_rng([seed, 7919]).choice(len(positions), count, replace=False))
    return picked, np.asarray(positions[picked], np.int64)


class HeldBackGrid:
    def __init__(self, data: str, columns: FeatureColumns, positions: np.ndarray, mode: str, provenance: dict,
                 scaling: float, device: torch.device, precision: str, seed: int, output: str,
                 version: int | None = None):
        import lance

        ds = lance.dataset(data, version=version)  # the version `positions` are of
        table = ds.take(positions, columns=[ID, *columns.names()])
        self.mean = read_fixed(table, columns.mean, ds).float().to(device)  # (K, 4, h, w)
        if columns.length is None:
            self.cond = F.normalize(as_tokens(read_fixed(table, columns.cond, ds)).float(), dim=-1).to(device)
            self.mask = None
        else:
            cond, mask = read_padded(table, columns.cond, columns.length, ds)
            self.cond, self.mask = cond.float().to(device), mask.to(device)
        self.provenance, self.scaling, self.device, self.precision = provenance, scaling, device, precision
        self.seed, self.folder, self.latents, self.shown = seed, os.path.join(output, "samples"), None, None
        os.makedirs(self.folder, exist_ok=True)
        with open(os.path.join(self.folder, "held-back.json"), "w") as f:
            json.dump({"mode": mode, "ids": table[ID].to_pylist()}, f, indent=1)

    def write(self, ema, step: int) -> str:
        from lumos.trainer.grid import sample_labels, save_grid
        from lumos.trainer.run_encoders import Latents
        from lumos.trainer.sampler import generate

        if self.latents is None:  # the first grid: load the VAE, decode the posterior means once
            self.latents = Latents(self.provenance["latents"], self.scaling, self.device)
            self.shown = self.latents.decode(self.mean * self.scaling)
        samples = generate(ema, self.cond, self.mask, latent_shape=tuple(self.mean.shape[1:]), num=SAMPLES,
                           steps=STEPS, cfg=CFG, scheduler=SCHEDULER, seed=self.seed, precision=self.precision)
        samples = self.latents.decode(samples)
        rows = [[self.shown[i], *samples[i * SAMPLES:(i + 1) * SAMPLES]] for i in range(len(self.shown))]
        return save_grid(rows, os.path.join(self.folder, f"step-{step:07d}.png"),
                         header=["recon", *sample_labels(SAMPLES, self.seed)])
