"""The Lumos DiT: diffusers' PixArtTransformer2DModel (self-attention → cross-attention → MLP), conditioned by
cross-attention on DINO's CLS vector (I2I: one 768-d token) or on T5 tokens (T2I: 4096-d), plus a null
condition for classifier-free guidance. `--arch pixart`: adaLN-single, ε only, a learned null token (what
PixArtAlphaPipeline loads); `--arch lumos`: official Lumos' per-block adaLN, ε and variance, a fixed null
(trainer/lumos_arch.py).

    x (N, 4, H, W) latents, t (N,), cond (N, L, C), mask (N, L) → ε̂ (N, 4, H, W) (lumos: ε̂ and v, 8 channels)
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class DiTSize:
    depth: int
    hidden: int
    heads: int
    patch: int = 2


# DiT's size registry (Peebles & Xie); DiT-T/2 and DiT-T3/2 are ours, for tests.
DIT_MODELS = {
    "DiT-T/2": DiTSize(depth=2, hidden=64, heads=2),
    "DiT-T3/2": DiTSize(depth=2, hidden=48, heads=2),  # ours, for tests of --micro-conditions: a width 3 divides
    "DiT-S/2": DiTSize(depth=12, hidden=384, heads=6),
    "DiT-B/2": DiTSize(depth=12, hidden=768, heads=12),
    "DiT-L/2": DiTSize(depth=24, hidden=1024, heads=16),
    "DiT-XL/2": DiTSize(depth=28, hidden=1152, heads=16),  # the paper's model
}
# diffusers' PixArt-α XL/2 transformer configuration (PixArt-alpha/PixArt-XL-2-256x256), for comparison.
PIXART_ALPHA_XL_2 = dict(num_layers=28, attention_head_dim=72, num_attention_heads=16, in_channels=4,
                         out_channels=8, caption_channels=4096, cross_attention_dim=1152, sample_size=32,
                         patch_size=2, norm_type="ada_norm_single", activation_fn="gelu-approximate",
                         num_embeds_ada_norm=1000, norm_elementwise_affine=False, norm_eps=1e-6,
                         attention_bias=True, use_additional_conditions=False)


def pixart_transformer_class(hide_transformers: bool = True):
    """diffusers' PixArtTransformer2DModel, imported without importing transformers.

    diffusers' quantizer module imports transformers only to subclass a config mixin, when it is installed.
    The training process must hold no encoder library (and saves seconds of start-up on every DDP rank), so
    transformers is hidden while diffusers loads: diffusers then uses its own stand-in class. Samplers, which
    load encoders anyway, pass hide_transformers=False."""
    hidden = hide_transformers and "transformers" not in sys.modules and "diffusers" not in sys.modules
    if hidden:
        sys.modules["transformers"] = None  # makes `import transformers` raise ImportError
    try:
        from diffusers import PixArtTransformer2DModel
    finally:
        if hidden and sys.modules.get("transformers", 0) is None:
            del sys.modules["transformers"]
    return PixArtTransformer2DModel


class LumosDiT(nn.Module):
    def __init__(self, size: str, latent_size: int, latent_channels: int, caption_channels: int,
                 grad_checkpointing: bool = False, hide_transformers: bool = True, micro_conditions: bool = False,
                 downsample: int = 8, arch: str = "pixart", null_tokens: int = 1):
        super().__init__()
        s = DIT_MODELS[size]
        # arch: pixart (adaLN-single, ε only, a learned null token: exports to PixArtAlphaPipeline) or lumos
        # (official Lumos: per-block adaLN, ε and variance, a fixed null of `null_tokens`; trainer/lumos_arch.py)
        self.arch, self.latent_channels = arch, latent_channels
        # micro-conditions: the image's size in pixels (latent cells × `downsample`) and its aspect ratio, as
        # PixArtAlphaPipeline gives them, computed from each batch's latent shape
        self.micro_conditions, self.downsample = micro_conditions, downsample
        self.transformer = pixart_transformer_class(hide_transformers)(
            num_layers=s.depth, attention_head_dim=s.hidden // s.heads, num_attention_heads=s.heads,
            in_channels=latent_channels,
            out_channels=latent_channels * (2 if arch == "lumos" else 1),  # lumos: ε then the variance's v
            sample_size=latent_size, patch_size=s.patch, caption_channels=caption_channels,
            cross_attention_dim=s.hidden, norm_type="ada_norm_single", use_additional_conditions=micro_conditions)
        if arch == "lumos":
            from lumos.trainer.lumos_arch import make_lumos

            make_lumos(self.transformer)
            # the unconditional input: a fixed random buffer of the condition's tokens (official y_embedding)
            self.register_buffer("null", torch.randn(null_tokens, caption_channels) / caption_channels ** 0.5)
        else:  # one learned token (PixArt's y_embedding is initialised the same way)
            self.null = nn.Parameter(torch.randn(caption_channels) / caption_channels ** 0.5)
        if grad_checkpointing:
            self.transformer.enable_gradient_checkpointing()

    def drop(self, cond: torch.Tensor, mask: torch.Tensor | None, drop: torch.Tensor):
        """Rows where `drop` get the null condition. pixart: the null token first, the rest masked out; lumos:
        the fixed null's first L tokens under the row's own mask, as official."""
        if self.arch == "lumos":
            null = self.null[:cond.shape[1]].to(cond.dtype)[None].expand_as(cond)
            return torch.where(drop[:, None, None], null, cond), mask
        null = torch.zeros_like(cond)
        null[:, 0] = self.null.to(cond.dtype)
        cond = torch.where(drop[:, None, None], null, cond)  # (N, L, C)
        if mask is not None:
            null_mask = torch.zeros_like(mask)
            null_mask[:, 0] = 1
            mask = torch.where(drop[:, None], null_mask, mask)
        return cond, mask

    def forward(self, x, t, cond, mask=None, drop=None):
        if drop is not None:  # inside forward, so that DDP sees the null token used
            cond, mask = self.drop(cond, mask, drop)
        return self.transformer(x, encoder_hidden_states=cond, timestep=t, encoder_attention_mask=mask,
                                added_cond_kwargs=self.added_conditions(x), return_dict=False)[0]

    def epsilon(self, x, t, cond, mask=None):
        """The predicted ε alone (lumos: the first half of the output; the sampler guides it alone)."""
        return self(x, t, cond, mask)[:, :self.latent_channels]

    def added_conditions(self, x: torch.Tensor) -> dict:
        if not self.micro_conditions:
            return {"resolution": None, "aspect_ratio": None}
        n, (h, w) = x.shape[0], x.shape[-2:]
        size = torch.tensor([[h * self.downsample, w * self.downsample]], dtype=x.dtype, device=x.device)
        ratio = torch.tensor([[h / w]], dtype=x.dtype, device=x.device)
        return {"resolution": size.expand(n, 2), "aspect_ratio": ratio.expand(n, 1)}


def parameter_count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def autocast(precision: str, device: torch.device):
    """fp16 or bf16 autocast on the device, nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.float16 if precision == "fp16" else torch.bfloat16)
