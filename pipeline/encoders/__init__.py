"""The registry of frozen encoders: one name, one configuration, one set of columns."""

from __future__ import annotations

from lumos.curation.errors import UserError
from lumos.pipeline.encoders.base import ImageEncoder
from lumos.pipeline.encoders.vae import VaeEncoder
from lumos.pipeline.encoders.vit import VitEncoder

# name → builder(resolution, weights, random_weights)
ENCODERS = {
    "sd-vae": lambda r, w, rnd: VaeEncoder("sd-vae", w, rnd, hub_id="stabilityai/sd-vae-ft-mse", resolution=r),
    "sd-vae-ema": lambda r, w, rnd: VaeEncoder("sd-vae-ema", w, rnd, hub_id="stabilityai/sd-vae-ft-ema",
                                               resolution=r),
    "dino-b": lambda r, w, rnd: VitEncoder("dino-b", w, rnd, timm_name="vit_base_patch16_224.dino"),
    "dinov2-b": lambda r, w, rnd: VitEncoder("dinov2-b", w, rnd, timm_name="vit_base_patch14_dinov2.lvd142m",
                                             timm_kwargs={"img_size": 224}),
    # Test encoders: seeded, random, small; the same name always builds the same weights.
    "tiny-vae": lambda r, w, rnd: VaeEncoder("tiny-vae", None, False, hub_id=None, resolution=r),
    "tiny-dino": lambda r, w, rnd: VitEncoder("tiny-dino", None, False, timm_name="tiny", dim=64),
}


def get_encoder(name: str, resolution: int = 256, weights: str | None = None,
                random_weights: bool = False) -> ImageEncoder:
    if name not in ENCODERS:
        raise UserError(f"unknown encoder {name!r}; choose from {', '.join(ENCODERS)}")
    return ENCODERS[name](resolution, weights, random_weights)
