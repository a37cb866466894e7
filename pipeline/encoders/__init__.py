"""The registry of frozen encoders: one name, one configuration, one set of columns."""

from __future__ import annotations

from dataclasses import dataclass

from lumos.floor.errors import UserError
from lumos.pipeline.encoders.base import PRECISIONS, Encoder
from lumos.pipeline.encoders.clip import ClipEncoder
from lumos.pipeline.encoders.pixels import PixelEncoder
from lumos.pipeline.encoders.t5 import T5_XXL, T5Encoder
from lumos.pipeline.encoders.vae import VaeEncoder
from lumos.pipeline.encoders.vit import MocoV3Encoder, VitEncoder
from lumos.schemas.features import BUCKETINGS, TOKEN_SETS, latents_name


@dataclass(frozen=True)
class EncoderConfig:
    """An encoder by name, with what the command line sets for it. `random_weights` builds the real
    architecture without its weights: tests of the real code path only."""

    name: str
    resolution: int = 256  # VAE input side (pixels: the stored side)
    weights: str | None = None  # a local path instead of the hub id
    random_weights: bool = False
    precision: str = "fp32"  # compute dtype: fp32 | bf16
    tokens: str = "cls"  # ViT encoders: cls | patch | all | top119
    buckets: str = "none"  # latent encoders: none (center square) | pixart (aspect-ratio bins)
    preprocess: str = "official"  # dino-b: official (resize 224 bilinear, crop 224) | resize256 (bicubic, crop 224)
    clean_captions: str = "official"  # T5 encoders: official (Lumos / PixArt-α's clean_caption) | none

    @property
    def stored_name(self) -> str:
        """What the features go by in the table: latents carry their resolution and bucketing (sd-vae-512)."""
        return latents_name(self.name, self.resolution, self.buckets) if self.name in LATENT_ENCODERS else self.name

    def build(self) -> Encoder:
        if self.name not in ENCODERS and self.name not in BENCH_ENCODERS:
            raise UserError(f"unknown encoder {self.name!r}; choose from {', '.join(ENCODERS)}")
        if self.precision not in PRECISIONS:
            raise UserError(f"--precision {self.precision}: expected one of {', '.join(PRECISIONS)}")
        if self.tokens not in TOKEN_SETS:
            raise UserError(f"--tokens {self.tokens}: expected one of {', '.join(TOKEN_SETS)}")
        if self.preprocess not in DINO_PREPROCESS:
            raise UserError(f"--dino-preprocess {self.preprocess}: expected one of {', '.join(DINO_PREPROCESS)}")
        if self.buckets not in BUCKETINGS:
            raise UserError(f"--buckets {self.buckets}: expected one of {', '.join(BUCKETINGS)}")
        if self.buckets != "none" and self.name not in LATENT_ENCODERS:
            raise UserError(f"--buckets {self.buckets}: {self.name} is no latent encoder (buckets cut the VAE's "
                            f"input: {', '.join(LATENT_ENCODERS)})")
        # `tokens` is read by the ViT encoders only
        encoder = {**ENCODERS, **BENCH_ENCODERS}[self.name](self.stored_name, self)
        if self.name in LATENT_ENCODERS:
            aspect_buckets_known(self)
            encoder.family = self.name
        return encoder


def aspect_buckets_known(config: EncoderConfig) -> None:
    """--buckets pixart needs PixArt's table for the resolution (256, 512, 1024): one line otherwise."""
    if config.buckets != "none":
        from lumos.pipeline.encoders.aspect_buckets import bins

        bins(config.resolution)


def _vae(hub_id):
    return lambda name, o: VaeEncoder(name, o.weights, o.random_weights, o.precision, hub_id=hub_id,
                                      resolution=o.resolution, buckets=o.buckets)


def _vit(cls, **kwargs):
    return lambda name, o: cls(name, o.weights, o.random_weights, o.precision, tokens=o.tokens, **kwargs)


# dino-b's transform, by name. official: ant-research/lumos' (short side to 224, bilinear; center 224), the
# images the released model was trained and sampled with; resize256: timm's eval transform for ViTs (short side
# to 256, bicubic; center 224), what lumos-encode used before (its tables' provenance says resize 256).
DINO_PREPROCESS = {"official": dict(resize=224, resample="bilinear"), "resize256": dict(resize=256, resample="bicubic")}


def _dino(timm_name):
    return lambda name, o: VitEncoder(name, o.weights, o.random_weights, o.precision, tokens=o.tokens,
                                      timm_name=timm_name, **DINO_PREPROCESS[o.preprocess],
                                      # named in provenance when official; resize256's record is the one
                                      # tables made before the option have (crop "resize 256, center 224")
                                      transform=o.preprocess if o.preprocess == "official" else None)


def _t5(hub_id):
    return lambda name, o: T5Encoder(name, o.weights, o.random_weights, o.precision, hub_id=hub_id,
                                     clean_captions=o.clean_captions)


ENCODERS = {
    "sd-vae": _vae("stabilityai/sd-vae-ft-mse"),  # as official Lumos
    "sd-vae-ema": _vae("stabilityai/sd-vae-ft-ema"),
    # the image itself at --resolution, in [-1, 1]: a latent space a CPU learns in minutes (the demo)
    "pixels": lambda name, o: PixelEncoder(name, precision=o.precision, resolution=o.resolution,
                                                buckets=o.buckets),
    "dino-b": _dino("vit_base_patch16_224.dino"),  # the paper's condition encoder
    "dinov2-b": _vit(VitEncoder, timm_name="vit_base_patch14_dinov2.lvd142m", patch_size=14,
                     timm_kwargs={"img_size": 224}),
    "clip-l": _vit(ClipEncoder),
    "mocov3-b": _vit(MocoV3Encoder),
    "t5-xxl": _t5("google/flan-t5-xxl"),  # as the paper
    "t5-v1_1-xxl": _t5("google/t5-v1_1-xxl"),  # as official Lumos code
    # Test encoders: seeded, random, small; the same name always builds the same weights.
    "tiny-vae": lambda name, o: VaeEncoder(name, None, False, o.precision, hub_id=None, resolution=o.resolution,
                                                buckets=o.buckets),
    # tiny-dino takes --resolution as its input side when that is under 224 (benchmarks at small sizes)
    "tiny-dino": lambda name, o: VitEncoder(name, None, False, o.precision, tokens=o.tokens, timm_name="tiny",
                                            dim=64, image_size=min(224, o.resolution),
                                            resize=round(min(224, o.resolution) * 256 / 224)),
    "tiny-clip": lambda name, o: ClipEncoder(name, None, False, o.precision, tokens=o.tokens, model_name="tiny",
                                             dim=64, patch_size=16),
    "tiny-t5": lambda name, o: T5Encoder(name, None, False, o.precision, hub_id=None,
                                         clean_captions=o.clean_captions),
}
# Their features' names carry the resolution and the bucketing (schemas/features.py latents_name).
LATENT_ENCODERS = ("sd-vae", "sd-vae-ema", "pixels", "tiny-vae")
# For bench/encode.py only (not offered by the CLI): T5-XXL's width (4096) at one layer, random weights and
# byte tokens, so that stored bytes a token are measured at the real size on a CPU.
BENCH_ENCODERS = {
    "bench-t5-4096": lambda name, o: T5Encoder(name, None, True, o.precision, hub_id="bench",
                                               arch={**T5_XXL, "num_layers": 1}, clean_captions=o.clean_captions),
}

