"""FLOPs of the Lumos DiT (PixArt-α blocks: self-attention → cross-attention → MLP, adaLN-single), counted from
its shapes: for MFU in bench/train_gpu.py. A multiply-add is 2 FLOPs; norms, activations and the adaLN
modulation arithmetic (O(tokens · width), not O(width²)) are left out, as torch.utils.flop_counter leaves them
out. Training is 3× the forward (the backward costs twice the forward), the usual convention (PaLM, Kaplan)."""

from __future__ import annotations

from lumos.trainer.models import DIT_MODELS

TIMESTEP_FREQUENCIES = 256  # PixArt's sinusoidal timestep embedding width


def forward_flops(size: str, latent_size: int, latent_channels: int, cond_tokens: int, cond_channels: int) -> int:
    """Forward FLOPs for one sample of the DiT `size` on (C, S, S) latents with `cond_tokens` condition tokens."""
    s = DIT_MODELS[size]
    d, p = s.hidden, s.patch
    tokens = (latent_size // p) ** 2
    macs = tokens * p * p * latent_channels * d  # patch embedding
    macs += TIMESTEP_FREQUENCIES * d + d * d + d * 6 * d  # timestep MLP and adaLN-single's linear, once
    macs += cond_tokens * (cond_channels * d + d * d)  # caption projection (two linears)
    per_block = (tokens * 4 * d * d + 2 * tokens * tokens * d  # self-attention: q, k, v, out; QKᵀ and AV
                 + tokens * 2 * d * d + cond_tokens * 2 * d * d  # cross-attention: q, out on the image; k, v on the condition
                 + 2 * tokens * cond_tokens * d  # its QKᵀ and AV
                 + tokens * 8 * d * d)  # the MLP (D → 4D → D)
    macs += s.depth * per_block
    macs += tokens * d * p * p * latent_channels  # final layer (ε only)
    return 2 * macs


def train_flops(*args) -> int:
    """FLOPs of one training sample: forward and backward."""
    return 3 * forward_flops(*args)
