"""`--arch lumos`: official Lumos' DiT (ant-research/lumos `LumosI2I`, `LumosT2I`), built from diffusers'
PixArt blocks with three changes that the released weights need:

- **Per-block adaLN.** Each block has its own modulation, DiT's adaLN-zero: block i takes
  Linear_i(SiLU(t_emb)) as its 6 shifts, scales and gates, where PixArt-α shares one (adaLN-single: one
  t_block, plus a learned table per block). Here the shared t_block (`adaln_single.linear`) is replaced by
  `PerBlockAdaLN`, whose output is every block's modulation side by side; a forward pre-hook hands block i its
  own slice, and each block's table is a zero buffer. The rest of PixArtTransformer2DModel's forward (patch
  and position embedding, caption projection, masking, the final layer's table on t_emb, unpatchify,
  activation checkpointing, micro-conditions) is used as it is.
- **Learned variance.** 2 × C output channels: ε, then the variance interpolation v in [-1, 1] between β_t
  and the posterior's β̃_t (IDDPM's learned range), trained by the hybrid loss (trainer/diffusion.py).
- **Initialisation as DiT/PixArt's `initialize_weights`.** Xavier-uniform linears with zero biases, the patch
  projection as a linear, the timestep (and micro-condition) and caption MLPs N(0, 0.02), and zeros for every
  block's modulation, the cross-attention output projections and the final linear: each block starts as the
  identity.

The unconditional input is a fixed random buffer of the condition's shape (official `y_embedding`: one token
for the I2I CLS, 120 for T2I, attended under the caption's own mask), not a learned token.
"""

from __future__ import annotations

import torch
from torch import nn

ARCHS = ("pixart", "lumos")
T2I_NULL_TOKENS = 120  # official LumosT2I's y_embedding: model_max_length tokens


class PerBlockAdaLN(nn.Module):
    """Every block's adaLN modulation from SiLU(t_emb) (AdaLayerNormSingle applies the SiLU), side by side:
    (N, depth · 6 · hidden); block i's is slice i."""

    def __init__(self, hidden: int, depth: int):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(hidden, 6 * hidden) for _ in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([linear(x) for linear in self.blocks], dim=1)


def _own_modulation(index: int, width: int):
    """A pre-hook: block `index` gets its slice of the side-by-side modulations (as a keyword, or as the
    fifth argument when activation checkpointing passes them positionally)."""

    def hook(_module, args, kwargs):
        if "timestep" in kwargs:
            kwargs["timestep"] = kwargs["timestep"][:, index * width:(index + 1) * width]
        else:
            args = (*args[:4], args[4][:, index * width:(index + 1) * width], *args[5:])
        return args, kwargs

    return hook


def make_lumos(transformer: nn.Module) -> nn.Module:
    """Turn a PixArtTransformer2DModel (adaLN-single) into official Lumos' layout, in place, initialised as
    official."""
    hidden = transformer.inner_dim
    blocks = transformer.transformer_blocks
    transformer.adaln_single.linear = PerBlockAdaLN(hidden, len(blocks))
    for i, block in enumerate(blocks):
        del block.scale_shift_table  # official blocks have no table: their modulation is the linear's alone
        block.register_buffer("scale_shift_table", torch.zeros(6, hidden), persistent=False)
        block.register_forward_pre_hook(_own_modulation(i, 6 * hidden), with_kwargs=True)
    initialize_as_official(transformer)
    return transformer


@torch.no_grad()
def initialize_as_official(transformer: nn.Module) -> None:
    for module in transformer.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
    patch = transformer.pos_embed.proj.weight
    nn.init.xavier_uniform_(patch.view(patch.shape[0], -1))
    nn.init.zeros_(transformer.pos_embed.proj.bias)
    emb = transformer.adaln_single.emb
    embedders = [emb.timestep_embedder, *((emb.resolution_embedder, emb.aspect_ratio_embedder)
                                          if emb.use_additional_conditions else ())]  # LumosT2IMS: size, ratio too
    for linear in (*(e.linear_1 for e in embedders), *(e.linear_2 for e in embedders),
                   transformer.caption_projection.linear_1, transformer.caption_projection.linear_2):
        nn.init.normal_(linear.weight, std=0.02)
    zeroed = [*transformer.adaln_single.linear.blocks, transformer.proj_out,
              *(block.attn2.to_out[0] for block in transformer.transformer_blocks)]
    for linear in zeroed:
        nn.init.zeros_(linear.weight)
        nn.init.zeros_(linear.bias)
