"""Official Lumos checkpoints (ant-research/lumos `LumosI2I`, `LumosT2I` and the 1024-px multi-scale
`LumosT2IMS`, e.g. the released `Lumos_I2I.pth`) in our `--arch lumos` model's names.

| official key | ours (`LumosDiT`, --arch lumos) |
|---|---|
| `x_embedder.proj.{weight,bias}` | `transformer.pos_embed.proj.*` |
| `pos_embed` (a fixed sin-cos buffer) | not stored: computed for each size |
| `t_embedder.mlp.0.*`, `t_embedder.mlp.2.*` | `transformer.adaln_single.emb.timestep_embedder.linear_1.*`, `linear_2.*` |
| `csize_embedder.mlp.0.*`, `mlp.2.*` (multi-scale) | `transformer.adaln_single.emb.resolution_embedder.linear_1.*`, `linear_2.*` |
| `ar_embedder.mlp.0.*`, `mlp.2.*` (multi-scale) | `transformer.adaln_single.emb.aspect_ratio_embedder.linear_1.*`, `linear_2.*` |
| `y_embedder.y_proj.fc1.*`, `fc2.*` | `transformer.caption_projection.linear_1.*`, `linear_2.*` |
| `y_embedder.y_embedding` (the fixed null) | `null` |
| `blocks.i.attn.qkv.*` (rows: q, k, v) | `transformer.transformer_blocks.i.attn1.to_q.*`, `to_k.*`, `to_v.*` |
| `blocks.i.attn.proj.*` | `transformer.transformer_blocks.i.attn1.to_out.0.*` |
| `blocks.i.cross_attn.q_linear.*` | `transformer.transformer_blocks.i.attn2.to_q.*` |
| `blocks.i.cross_attn.kv_linear.*` (rows: k, v) | `transformer.transformer_blocks.i.attn2.to_k.*`, `to_v.*` |
| `blocks.i.cross_attn.proj.*` | `transformer.transformer_blocks.i.attn2.to_out.0.*` |
| `blocks.i.mlp.fc1.*`, `fc2.*` | `transformer.transformer_blocks.i.ff.net.0.proj.*`, `ff.net.2.*` |
| `blocks.i.adaLN_modulation.1.*` | `transformer.adaln_single.linear.blocks.i.*` |
| `final_layer.linear.*` | `transformer.proj_out.*` |
| `final_layer.scale_shift_table` | `transformer.scale_shift_table` |

A checkpoint file holds the state dict itself or one under `state_dict_ema` (preferred) or `state_dict`; a
`module.` prefix (DDP) is dropped.
"""

from __future__ import annotations

import re

import torch

from lumos.floor.errors import UserError

_WHOLE = {
    "x_embedder.proj": "transformer.pos_embed.proj",
    "t_embedder.mlp.0": "transformer.adaln_single.emb.timestep_embedder.linear_1",
    "t_embedder.mlp.2": "transformer.adaln_single.emb.timestep_embedder.linear_2",
    # LumosT2IMS's micro-conditions (PixArt-α's SizeEmbedder: the same sinusoid and MLP as diffusers' embedders)
    "csize_embedder.mlp.0": "transformer.adaln_single.emb.resolution_embedder.linear_1",
    "csize_embedder.mlp.2": "transformer.adaln_single.emb.resolution_embedder.linear_2",
    "ar_embedder.mlp.0": "transformer.adaln_single.emb.aspect_ratio_embedder.linear_1",
    "ar_embedder.mlp.2": "transformer.adaln_single.emb.aspect_ratio_embedder.linear_2",
    "y_embedder.y_proj.fc1": "transformer.caption_projection.linear_1",
    "y_embedder.y_proj.fc2": "transformer.caption_projection.linear_2",
    "final_layer.linear": "transformer.proj_out",
}
_BLOCK = {  # per block i: official module → ours, or a list of ours for rows split in order
    "attn.qkv": ["attn1.to_q", "attn1.to_k", "attn1.to_v"],
    "attn.proj": "attn1.to_out.0",
    "cross_attn.q_linear": "attn2.to_q",
    "cross_attn.kv_linear": ["attn2.to_k", "attn2.to_v"],
    "cross_attn.proj": "attn2.to_out.0",
    "mlp.fc1": "ff.net.0.proj",
    "mlp.fc2": "ff.net.2",
}
SKIPPED = ("pos_embed",)  # fixed buffers we compute


def unwrap(checkpoint) -> dict:
    """The state dict of a loaded checkpoint file: its EMA weights when it has them, `module.` dropped."""
    if not isinstance(checkpoint, dict):
        raise UserError("the checkpoint holds no state dict")
    for key in ("state_dict_ema", "state_dict"):
        if isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
            break
    return {k.removeprefix("module."): v for k, v in checkpoint.items() if isinstance(v, torch.Tensor)}


def to_ours(official: dict, own: dict) -> dict:
    """Official Lumos weights → our state dict, checked against `own` (our model's state dict): every official
    key mapped, every one of ours filled, every shape the same; else one line naming the first that is not."""
    out: dict[str, torch.Tensor] = {}
    for key, value in official.items():
        if key in SKIPPED:
            continue
        target = _target(key)
        if isinstance(target, list):  # fused rows (q, k, v or k, v), split in order
            out.update(zip(target, value.chunk(len(target), dim=0)))
        else:
            out[target] = value
    for name, value in out.items():
        if name not in own:
            raise UserError(f"{name}: our model has no such weight (more blocks in the checkpoint: another size? "
                            "size embedders: a multi-scale model, which needs --micro-conditions?)")
        if tuple(own[name].shape) != tuple(value.shape):
            raise UserError(f"{name}: shape {tuple(value.shape)} in the checkpoint, {tuple(own[name].shape)} in our "
                            "model (another size, latent or condition width?)")
    missing = sorted(set(own) - set(out))
    if missing:
        raise UserError(f"the checkpoint has nothing for {len(missing)} of our weights, e.g. {missing[0]}")
    return {k: v.contiguous() for k, v in out.items()}


def _target(key: str) -> str | list[str]:
    """Our name for one official key (a list: the fused rows' names, in order), or a UserError naming it."""
    if key == "y_embedder.y_embedding":
        return "null"
    if key == "final_layer.scale_shift_table":
        return "transformer.scale_shift_table"
    module, _, leaf = key.rpartition(".")
    if module in _WHOLE:
        return f"{_WHOLE[module]}.{leaf}"
    found = re.fullmatch(r"blocks\.(\d+)\.(.+)", module)
    if found:
        index, inner = found.groups()
        if inner == "adaLN_modulation.1":
            return f"transformer.adaln_single.linear.blocks.{index}.{leaf}"
        if inner in _BLOCK:
            prefix, target = f"transformer.transformer_blocks.{index}.", _BLOCK[inner]
            return [f"{prefix}{t}.{leaf}" for t in target] if isinstance(target, list) else f"{prefix}{target}.{leaf}"
    raise UserError(f"official key {key}: not mapped (an official model of another kind?)")
