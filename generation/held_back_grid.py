"""The picture of `lumos-train --sample-every`: each held-back row is the VAE's reconstruction of its image,
then SAMPLES samples from its stored condition (DINO features for I2I, caption tokens for T2I).

Passed to the trainer as its sample-grid hook by the lumos-train command. The VAE's decoder loads the first
time a grid is written (rank 0 only); the noise is the same at every step, so grids compare.
"""

from __future__ import annotations

import os

from lumos.trainer.held_back import HeldBack

SAMPLES = 4  # per held-back row
STEPS, CFG, SCHEDULER = 20, 4.5, "dpm"


class HeldBackGrid:
    def __init__(self, held: HeldBack):
        from lumos.generation.run_encoders import Latents

        self.held = held
        self.latents = Latents(held.provenance["latents"], held.scaling, held.device)
        self.shown = self.latents.decode(held.mean * held.scaling)  # the reconstructions, decoded once

    def __call__(self, ema, step: int) -> str:
        from lumos.generation.grid import sample_labels, save_grid
        from lumos.generation.sampler import generate

        h = self.held
        samples = generate(ema, h.cond, h.mask, latent_shape=tuple(h.mean.shape[1:]), num=SAMPLES, steps=STEPS,
                           cfg=CFG, scheduler=SCHEDULER, seed=h.seed, precision=h.precision)
        samples = self.latents.decode(samples)
        rows = [[self.shown[i], *samples[i * SAMPLES:(i + 1) * SAMPLES]] for i in range(len(self.shown))]
        return save_grid(rows, os.path.join(h.folder, f"step-{step:07d}.png"),
                         header=["recon", *sample_labels(SAMPLES, h.seed)])
