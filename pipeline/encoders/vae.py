"""The Stable Diffusion VAE: the posterior mean and std of each image, stored fp16. The trainer draws
z = (mean + std·ε) · scaling_factor at train time (PixArt, REPA): one frozen draw would lose augmentation."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lumos.floor.model_loading import quiet_loading
from lumos.pipeline.encoders.base import missing_weights
from lumos.pipeline.encoders.latents import LatentEncoder
from lumos.schemas import features

SCALING_FACTOR = 0.18215
# The SD VAE's architecture (stabilityai/sd-vae-ft-mse config), so random-weight tests need no download.
SD_VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2,
                     block_out_channels=(128, 256, 512, 512), norm_num_groups=32, act_fn="silu",
                     down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                     scaling_factor=SCALING_FACTOR)
# Same family, 4 levels (so the same 8× downsampling), tiny widths: the `tiny-vae` test encoder.
TINY_VAE_CONFIG = {**SD_VAE_CONFIG, "layers_per_block": 1, "block_out_channels": (8, 16, 32, 32),
                   "norm_num_groups": 8}


@dataclass
class VaeEncoder(LatentEncoder):
    hub_id: str | None = None  # None: the seeded tiny test model

    def build(self):
        import torch
        from diffusers import AutoencoderKL

        if self.hub_id is None:
            torch.manual_seed(0)
            return AutoencoderKL(**TINY_VAE_CONFIG)
        if self.random_weights:
            return AutoencoderKL(**SD_VAE_CONFIG)
        source = self.weights or self.hub_id
        try:
            with quiet_loading():
                return AutoencoderKL.from_pretrained(source, torch_dtype=torch.float32, low_cpu_mem_usage=False)
        except Exception as err:  # noqa: BLE001 - whatever the cause, the user needs the same advice
            raise missing_weights(f"the VAE {self.name}", source, err) from None

    def forward(self, pixels) -> dict[str, np.ndarray]:
        dist = self.model.encode(pixels).latent_dist  # fp32 by default, bf16 on request; never fp16 (DESIGN §4)
        return {features.mean_column(self.name): dist.mean.half().flatten(1).cpu().numpy(),
                features.std_column(self.name): dist.std.half().flatten(1).cpu().numpy()}

    def decode(self, latents):
        """Unscaled latents (N, 4, h/8, w/8) → images (N, 3, h, w) in about [-1, 1]."""
        return self.model.decode(latents).sample

    def describe(self) -> dict:
        return {"weights": self.hub_id or "tiny-vae (seeded random test model)", "resolution": self.resolution,
                **self.cut(), "resize": "bicubic", "normalisation": "[-1, 1]",
                "scaling_factor": SCALING_FACTOR}
