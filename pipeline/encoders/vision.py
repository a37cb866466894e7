"""What the ViT condition encoders share (DINO, DINOv2, MoCo v3 through timm; CLIP through open_clip): a
224 center crop with the encoder's own normalisation, the CLS vector stored fp16 (official Lumos
L2-normalises it at train time), and on request the token sets of the paper's ablations:

    --tokens cls     only `{name}_cls`
    --tokens patch   `{name}_tokens`: the T patch tokens                         (T, D)
    --tokens all     `{name}_tokens`: CLS then the T patch tokens                (1 + T, D)
    --tokens top119  `{name}_tokens`: CLS then the 119 patch tokens the CLS attends to most in the last
                     block (mean over heads), kept in their spatial order       (120, D)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
from PIL import Image

from lumos.pipeline.encoders.base import ImageEncoder, resize_crop_normalise
from lumos.schemas import features

TOP_K = 119


@dataclass
class VisionEncoder(ImageEncoder):
    dim: int = 768  # width of the stored vectors
    image_size: int = 224
    resize: int = 256  # short side before the center crop
    patch_size: int = 16
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    tokens: str = "cls"
    resample: str = "bicubic"  # the resize's filter: bicubic, or bilinear (official Lumos' DINO transform)
    transform: str | None = None  # dino-b: the named transform (official), recorded in provenance as `preprocess`

    def tokens_and_attention(self, pixels):
        """(N, 3, S, S) → (tokens (N, 1 + T, D) with CLS first, CLS attention over the patches (N, T) or None
        when `tokens` is not top119)."""
        raise NotImplementedError

    @property
    def input_size(self) -> int:
        return self.image_size

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def token_shape(self) -> tuple[int, int] | None:
        count = {"cls": None, "patch": self.num_patches, "all": 1 + self.num_patches, "top119": 1 + TOP_K}
        return None if count[self.tokens] is None else (count[self.tokens], self.dim)

    def payload_fields(self) -> list[pa.Field]:
        out = [features.tensor_field(features.cls_column(self.name), (self.dim,))]
        if self.token_shape():
            out.append(features.tensor_field(features.tokens_column(self.name), self.token_shape()))
        return out

    def preprocess(self, image: Image.Image) -> np.ndarray:
        return resize_crop_normalise(image, self.resize, self.image_size, self.mean, self.std, self.resample)

    def forward(self, pixels) -> dict[str, np.ndarray]:
        tokens, attention = self.tokens_and_attention(pixels)  # (N, 1 + T, D), (N, T)
        out = {features.cls_column(self.name): tokens[:, 0]}
        if self.tokens == "patch":
            out[features.tokens_column(self.name)] = tokens[:, 1:]
        elif self.tokens == "all":
            out[features.tokens_column(self.name)] = tokens
        elif self.tokens == "top119":
            out[features.tokens_column(self.name)] = top_tokens(tokens, attention, TOP_K)
        return {k: v.half().flatten(1).cpu().numpy() for k, v in out.items()}

    def common_description(self, weights: str) -> dict:
        named = {"preprocess": self.transform} if self.transform else {}
        return {"weights": weights, "resolution": self.image_size,
                "crop": f"resize {self.resize}, center {self.image_size}", "resize": self.resample,
                "normalisation": {"mean": list(self.mean), "std": list(self.std)}, "tokens": self.tokens, **named}


def cls_attention(x, weight, bias, heads: int, prefix: int, q_norm=None, k_norm=None):
    """How much the CLS query attends to each patch in one attention layer, mean over heads.

    x: the layer's normalised input (N, L, D); weight/bias: its stacked q, k, v projection (3D, D);
    prefix: tokens before the patches (CLS, registers). Returns (N, L - prefix)."""
    import torch
    import torch.nn.functional as F

    n, length, dim = x.shape
    head_dim = dim // heads
    q = F.linear(x[:, :1], weight[:dim], None if bias is None else bias[:dim]).reshape(n, heads, head_dim)
    k = F.linear(x, weight[dim:2 * dim], None if bias is None else bias[dim:2 * dim])
    k = k.reshape(n, length, heads, head_dim).transpose(1, 2)  # (N, H, L, hd)
    if q_norm is not None:
        q, k = q_norm(q), k_norm(k)
    scores = torch.einsum("nhd,nhld->nhl", q.float(), k.float()) * head_dim ** -0.5
    return scores.softmax(-1).mean(1)[:, prefix:]  # (N, T)


def top_tokens(tokens, attention, k: int):
    """CLS, then the k patches with the highest CLS attention in spatial order: (N, 1 + T, D) → (N, 1 + k, D)."""
    import torch

    index = attention.topk(k, dim=-1).indices.sort(dim=-1).values + 1  # (N, k), +1: past the CLS
    picked = torch.gather(tokens, 1, index[..., None].expand(-1, -1, tokens.shape[-1]))
    return torch.cat([tokens[:, :1], picked], dim=1)
