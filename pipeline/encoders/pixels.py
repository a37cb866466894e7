"""`pixels`: the image itself as its "latent", for a space a CPU can learn in minutes (the demo, tests).

The center square resized to `--resolution` (e.g. 16 or 32 px, bicubic) in [-1, 1], stored as the posterior
mean with a std of 0 and a scaling factor of 1, so the trainer's z = (mean + std·ε)·scale is the picture
itself, and decoding is the identity. Train, sample, export and eval treat it like any VAE."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lumos.pipeline.encoders.latents import LatentEncoder
from lumos.schemas import features

SCALING_FACTOR = 1.0


class _Identity:
    """The 'model' of the pixels encoder: nothing to load, nothing to learn."""

    def eval(self):
        return self

    def to(self, _device):
        return self

    def parameters(self):
        return iter(())


@dataclass
class PixelEncoder(LatentEncoder):
    channels = 3
    downsample = 1

    def build(self):
        return _Identity()

    def check(self) -> None:
        """No weights to look for."""

    def forward(self, pixels) -> dict[str, np.ndarray]:
        mean = pixels.half().flatten(1).cpu().numpy()
        return {features.mean_column(self.name): mean, features.std_column(self.name): np.zeros_like(mean)}

    def decode(self, latents):
        """Unscaled latents (N, 3, R, R) → images in [-1, 1]: the identity."""
        return latents

    def describe(self) -> dict:
        return {"weights": "none (the pixels themselves)", "resolution": self.resolution, **self.cut(),
                "resize": "bicubic", "normalisation": "[-1, 1]", "scaling_factor": SCALING_FACTOR}
