"""ViT condition encoders through timm: DINO ViT-B/16 (the paper's), DINOv2-B, and MoCo v3 ViT-B/16 (the
paper's ablation) from its released checkpoint, which has no hub copy."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field

from lumos.floor.errors import UserError
from lumos.floor.model_loading import quiet_loading
from lumos.pipeline.encoders.base import missing_weights
from lumos.pipeline.encoders.vision import VisionEncoder, cls_attention

TINY_VIT = dict(patch_size=16, embed_dim=64, depth=2, num_heads=2)
MOCOV3_URL = "https://dl.fbaipublicfiles.com/moco-v3/vit-b-300ep/vit-b-300ep.pth.tar"
MOCOV3_PREFIX = "module.base_encoder."  # the released checkpoint's keys; the rest are timm's ViT names


@dataclass
class VitEncoder(VisionEncoder):
    timm_name: str = "vit_base_patch16_224.dino"  # "tiny" builds the seeded test model
    timm_kwargs: dict = field(default_factory=dict)  # e.g. img_size=224 for DINOv2 (trained at 518)

    def build(self):
        import timm
        import torch

        if self.timm_name == "tiny":
            torch.manual_seed(0)
            return timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0,
                                     img_size=self.image_size, **TINY_VIT)
        if self.random_weights:
            return timm.create_model(self.timm_name, pretrained=False, num_classes=0, **self.timm_kwargs)
        try:
            kwargs = {"pretrained_cfg_overlay": {"file": self.weights}} if self.weights else {}
            with quiet_loading():
                return timm.create_model(self.timm_name, pretrained=True, num_classes=0, **self.timm_kwargs, **kwargs)
        except Exception as err:  # noqa: BLE001
            raise missing_weights(f"the image encoder {self.name}", self.weights or f"timm {self.timm_name}",
                                  err) from None

    def tokens_and_attention(self, pixels):
        if self.tokens != "top119":
            return self.model.forward_features(pixels), None  # (N, 1 + T, D), timm's final norm applied
        last = self.model.blocks[-1]
        seen = {}
        hook = last.norm1.register_forward_hook(lambda _m, _i, out: seen.setdefault("x", out))
        try:
            tokens = self.model.forward_features(pixels)
        finally:
            hook.remove()
        attn = last.attn
        attention = cls_attention(seen["x"], attn.qkv.weight, attn.qkv.bias, attn.num_heads,
                                  self.model.num_prefix_tokens, attn.q_norm, attn.k_norm)
        return tokens, attention

    def describe(self) -> dict:
        name = "tiny-dino (seeded random test model)" if self.timm_name == "tiny" else f"timm:{self.timm_name}"
        return self.common_description(name)


@dataclass
class MocoV3Encoder(VitEncoder):
    """MoCo v3 ViT-B/16: timm's ViT-B/16 with the weights of the released `vit-b-300ep.pth.tar` (a local
    file: --weights PATH), provenance by the file's sha256."""

    timm_name: str = "vit_base_patch16_224"

    def build(self):
        import timm
        import torch

        model = timm.create_model(self.timm_name, pretrained=False, num_classes=0)
        if self.random_weights:
            return model
        if not self.weights:
            raise UserError(f"{self.name} has no hub copy: download {MOCOV3_URL} and pass --weights PATH")
        try:
            state = torch.load(self.weights, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001
            raise missing_weights(f"the image encoder {self.name}", self.weights, err) from None
        state = state.get("state_dict", state)
        encoder = {k[len(MOCOV3_PREFIX):]: v for k, v in state.items() if k.startswith(MOCOV3_PREFIX)}
        encoder = {k: v for k, v in (encoder or state).items() if not k.startswith("head")}
        missing, unexpected = model.load_state_dict(encoder, strict=False)
        if missing or unexpected:
            raise UserError(f"{self.weights} is not a MoCo v3 ViT-B/16 checkpoint: {len(missing)} weights missing "
                            f"(e.g. {(missing or ['-'])[0]}), {len(unexpected)} unexpected")
        return model

    def describe(self) -> dict:
        return self.common_description(f"mocov3 vit-b-300ep sha256:{_sha256(self.weights)}"
                                       if self.weights else "mocov3 (random weights)")


def _sha256(path: str) -> str:
    if not os.path.isfile(path):
        return "missing"
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
