"""CLIP ViT-L/14 (OpenAI weights through open_clip), the paper's CLIP ablation: the image tower only.

The CLS vector is CLIP's image embedding (ln_post, then the projection); patch tokens go through the same
ln_post and projection so that every stored vector lives in the same 768-d space. The model must be
`ViT-L-14-quickgelu` for the OpenAI weights (plain `ViT-L-14` loads them with a warning and is wrong).
"""

from __future__ import annotations

from dataclasses import dataclass

from lumos.floor.model_loading import quiet_loading
from lumos.floor.normalisation import OPENAI_MEAN, OPENAI_STD
from lumos.pipeline.encoders.base import missing_weights
from lumos.pipeline.encoders.vision import VisionEncoder, cls_attention

# The `tiny-clip` test encoder: open_clip's CLIP class, 224 px, patch 16 (196 patches, as ViT-B/16), tiny widths.
TINY_CLIP = {
    "embed_dim": 64,
    "quick_gelu": True,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 8, "vocab_size": 64, "width": 32, "heads": 2, "layers": 1},
}


@dataclass
class ClipEncoder(VisionEncoder):
    model_name: str = "ViT-L-14-quickgelu"  # "tiny" builds the seeded test model
    pretrained: str = "openai"
    resize: int = 224  # CLIP's eval transform: short side 224, center 224
    patch_size: int = 14
    mean: tuple = OPENAI_MEAN
    std: tuple = OPENAI_STD

    def build(self):
        import open_clip
        import torch
        from open_clip.model import CLIP

        if self.model_name == "tiny":
            torch.manual_seed(0)
            return CLIP(**TINY_CLIP).visual
        if self.random_weights:
            return open_clip.create_model(self.model_name, pretrained=None).visual
        source = self.weights or self.pretrained
        try:
            with quiet_loading():
                return open_clip.create_model(self.model_name, pretrained=source).visual
        except Exception as err:  # noqa: BLE001
            raise missing_weights(f"the image encoder {self.name}", f"open_clip {self.model_name} {source}",
                                  err) from None

    def tokens_and_attention(self, pixels):
        import torch

        visual, seen = self.model, {}
        last = visual.transformer.resblocks[-1]
        hook = (last.ln_1.register_forward_hook(lambda _m, _i, out: seen.setdefault("x", out))
                if self.tokens == "top119" else None)
        visual.output_tokens = True
        try:
            pooled, patches = visual(pixels)  # (N, E) projected CLS; (N, T, W) after ln_post
        finally:
            visual.output_tokens = False
            if hook:
                hook.remove()
        tokens = torch.cat([pooled[:, None], patches @ visual.proj], dim=1)  # (N, 1 + T, E)
        if hook is None:
            return tokens, None
        attn = last.attn
        return tokens, cls_attention(seen["x"], attn.in_proj_weight, attn.in_proj_bias, attn.num_heads, 1)

    def describe(self) -> dict:
        return self.common_description("tiny-clip (seeded random test model)" if self.model_name == "tiny"
                                       else f"open_clip:{self.model_name}:{self.pretrained}")
