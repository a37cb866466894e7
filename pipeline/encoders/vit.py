"""ViT image encoders through timm (DINO ViT-B/16 as the paper, DINOv2-B): 224 center crop with the
encoder's own normalisation, the CLS token stored fp16 (official Lumos L2-normalises it at train time)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
from PIL import Image

from lumos.pipeline.encoders.base import ImageEncoder, missing_weights, quiet_loading
from lumos.schemas import features

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TINY_VIT = dict(patch_size=16, embed_dim=64, depth=2, num_heads=2)


@dataclass
class VitEncoder(ImageEncoder):
    timm_name: str = "vit_base_patch16_224.dino"  # None-like "tiny" builds the seeded test model
    dim: int = 768
    image_size: int = 224
    resize: int = 256  # short side before the center crop (crop 0.875, timm's eval default)
    timm_kwargs: dict = field(default_factory=dict)  # e.g. img_size=224 for DINOv2 (trained at 518)

    @property
    def input_size(self) -> int:
        return self.image_size

    def fields(self) -> list[pa.Field]:
        return [features.tensor_field(features.cls_column(self.name), (self.dim,))]

    def preprocess(self, image: Image.Image) -> np.ndarray:
        w, h = image.size
        scale = self.resize / min(w, h)
        image = image.resize((max(self.resize, round(w * scale)), max(self.resize, round(h * scale))),
                             Image.Resampling.BICUBIC)
        left, top = (image.width - self.image_size) // 2, (image.height - self.image_size) // 2
        image = image.crop((left, top, left + self.image_size, top + self.image_size))
        x = (np.asarray(image, np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
        return x.transpose(2, 0, 1).astype(np.float32)  # (3, 224, 224)

    def build(self):
        import timm
        import torch

        if self.timm_name == "tiny":
            torch.manual_seed(0)
            return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, **TINY_VIT)
        if self.random_weights:
            return timm.create_model(self.timm_name, pretrained=False, num_classes=0, **self.timm_kwargs)
        try:
            kwargs = {"pretrained_cfg_overlay": {"file": self.weights}} if self.weights else {}
            with quiet_loading():
                return timm.create_model(self.timm_name, pretrained=True, num_classes=0, **self.timm_kwargs, **kwargs)
        except Exception as err:  # noqa: BLE001
            raise missing_weights(f"the image encoder {self.name}", f"timm {self.timm_name}", err) from None

    def forward(self, pixels) -> dict[str, np.ndarray]:
        tokens = self.model.forward_features(pixels)  # (N, 1 + T, D)
        return {features.cls_column(self.name): tokens[:, 0].half().cpu().numpy()}

    def describe(self) -> dict:
        name = "tiny-dino (seeded random test model)" if self.timm_name == "tiny" else f"timm:{self.timm_name}"
        return {"weights": name, "resolution": self.image_size, "crop": f"resize {self.resize}, center "
                f"{self.image_size}", "resize": "bicubic", "normalisation": "imagenet mean/std", "token": "cls",
                "compute_dtype": "float32"}
