"""--arch lumos against official Lumos (issue 16, acceptance 1 and 3): a reference written for this test in
plain PyTorch, following the DiT/PixArt equations of official `LumosI2I` (per-block adaLN-zero modulation,
self-attention, cross-attention, MLP; the final layer's table on t; learned variance), with random weights in
the official key layout, is converted and gives our model's outputs; a key we cannot map and a shape that does
not fit each fail in one line; DiT-XL/2's parameter count is the official model's."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lumos.floor.errors import UserError
from lumos.trainer.models import LumosDiT, parameter_count
from lumos.trainer.official_weights import to_ours, unwrap


def _sincos(dim: int, positions: torch.Tensor) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2))
    out = positions.reshape(-1, 1).double() * omega[None]
    return torch.cat([out.sin(), out.cos()], dim=1)


class RefBlock(nn.Module):
    def __init__(self, d, heads):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv, self.attn.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.cross_attn = nn.Module()
        self.cross_attn.q_linear, self.cross_attn.kv_linear = nn.Linear(d, d), nn.Linear(d, 2 * d)
        self.cross_attn.proj = nn.Linear(d, d)
        self.mlp = nn.Module()
        self.mlp.fc1, self.mlp.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(d, 6 * d))

    def _heads(self, x):
        n, length, d = x.shape
        return x.view(n, length, self.heads, d // self.heads).transpose(1, 2)

    def _attend(self, q, k, v, bias=None):
        scores = self._heads(q) @ self._heads(k).transpose(-1, -2) / math.sqrt(q.shape[-1] // self.heads)
        if bias is not None:
            scores = scores + bias
        out = scores.softmax(-1) @ self._heads(v)
        return out.transpose(1, 2).reshape(q.shape)

    def forward(self, x, y, t, y_mask):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(t).chunk(6, dim=1)
        h = self.norm1(x) * (1 + scale_msa[:, None]) + shift_msa[:, None]
        q, k, v = self.attn.qkv(h).chunk(3, dim=-1)
        x = x + gate_msa[:, None] * self.attn.proj(self._attend(q, k, v))
        k, v = self.cross_attn.kv_linear(y).chunk(2, dim=-1)
        bias = None if y_mask is None else torch.where(y_mask[:, None, None].bool(), 0.0, -torch.inf)
        x = x + self.cross_attn.proj(self._attend(self.cross_attn.q_linear(x), k, v, bias))
        h = self.norm2(x) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        return x + gate_mlp[:, None] * self.mlp.fc2(F.gelu(self.mlp.fc1(h), approximate="tanh"))


def _frequencies(values: torch.Tensor) -> torch.Tensor:
    """Official TimestepEmbedder.timestep_embedding with 256 channels: [cos, sin] of the value × 10000^(-i/128)."""
    half = 128
    freqs = torch.exp(-math.log(10000) * torch.arange(half) / half)
    args = values.reshape(-1)[:, None].float() * freqs[None]
    return torch.cat([args.cos(), args.sin()], dim=1)


class Reference(nn.Module):
    """Official LumosI2I's equations with its module names: x_embedder, t_embedder, y_embedder, blocks,
    final_layer; out channels 2 × C (ε, variance). `sizes`: LumosT2IMS's csize_embedder and ar_embedder
    (PixArt-α's SizeEmbedder, hidden / 3 each per value), added to the timestep embedding. The position
    table is official get_2d_sincos_pos_embed's for each input's grid, at `base_size` and `lewei_scale`."""

    def __init__(self, latent=8, channels=4, d=64, heads=2, depth=2, caption=16, tokens=1, patch=2, sizes=False,
                 lewei_scale=1.0):
        super().__init__()
        self.patch, self.out, self.d = patch, 2 * channels, d
        self.base_size, self.lewei_scale = latent // patch, lewei_scale
        self.x_embedder = nn.Module()
        self.x_embedder.proj = nn.Conv2d(channels, d, patch, patch)
        self.t_embedder = nn.Module()
        self.t_embedder.mlp = nn.Sequential(nn.Linear(256, d), nn.SiLU(), nn.Linear(d, d))
        if sizes:
            for name in ("csize_embedder", "ar_embedder"):
                embedder = nn.Module()
                embedder.mlp = nn.Sequential(nn.Linear(256, d // 3), nn.SiLU(), nn.Linear(d // 3, d // 3))
                setattr(self, name, embedder)
        self.y_embedder = nn.Module()
        self.y_embedder.y_proj = nn.Module()
        self.y_embedder.y_proj.fc1, self.y_embedder.y_proj.fc2 = nn.Linear(caption, d), nn.Linear(d, d)
        self.y_embedder.register_buffer("y_embedding", torch.randn(tokens, caption) / caption ** 0.5)
        self.blocks = nn.ModuleList(RefBlock(d, heads) for _ in range(depth))
        self.final_layer = nn.Module()
        self.final_layer.norm_final = nn.LayerNorm(d, elementwise_affine=False, eps=1e-6)
        self.final_layer.linear = nn.Linear(d, patch * patch * self.out)
        self.final_layer.scale_shift_table = nn.Parameter(torch.randn(2, d) / d ** 0.5)
        self.register_buffer("pos_embed", self._positions(self.base_size, self.base_size)[None])  # as official

    def _positions(self, gh: int, gw: int) -> torch.Tensor:
        """Half the width for the column, half for the row; coordinates scaled to base_size / lewei_scale."""
        rows = torch.arange(gh, dtype=torch.float64) / (gh / self.base_size) / self.lewei_scale
        cols = torch.arange(gw, dtype=torch.float64) / (gw / self.base_size) / self.lewei_scale
        rows, cols = torch.meshgrid(rows, cols, indexing="ij")
        return torch.cat([_sincos(self.d // 2, cols), _sincos(self.d // 2, rows)], 1).float()

    def forward(self, x, t, y, y_mask=None, drop=False, hw=None, ar=None):
        n, _, hh, ww = x.shape
        p = self.patch
        h = self.x_embedder.proj(x).flatten(2).transpose(1, 2) + self._positions(hh // p, ww // p)[None]
        temb = self.t_embedder.mlp(_frequencies(t))
        if hw is not None:  # LumosT2IMS: t + cat(csize(h), csize(w), ar)
            csize = self.csize_embedder.mlp(_frequencies(hw)).reshape(n, -1)
            temb = temb + torch.cat([csize, self.ar_embedder.mlp(_frequencies(ar)).reshape(n, -1)], dim=1)
        if drop:
            y = self.y_embedder.y_embedding[None].expand(n, -1, -1)
        y = self.y_embedder.y_proj.fc2(F.gelu(self.y_embedder.y_proj.fc1(y), approximate="tanh"))
        for block in self.blocks:
            h = block(h, y, temb, y_mask)
        shift, scale = (self.final_layer.scale_shift_table[None] + temb[:, None]).chunk(2, dim=1)
        h = self.final_layer.linear(self.final_layer.norm_final(h) * (1 + scale) + shift)
        h = h.reshape(n, hh // p, ww // p, p, p, self.out)
        return torch.einsum("nhwpqc->nchpwq", h).reshape(n, self.out, hh, ww)


def _reference(**kw):
    torch.manual_seed(1)
    ref = Reference(**kw)
    with torch.no_grad():  # random everywhere (official zero-inits some: a zero would hide a wrong mapping)
        for p in ref.parameters():
            p.normal_(0, 0.2)
    return ref.eval()


def _ours(ref_state, caption=16, tokens=1):
    ours = LumosDiT("DiT-T/2", 8, 4, caption, arch="lumos", null_tokens=tokens)
    ours.load_state_dict(to_ours(unwrap({"state_dict_ema": ref_state}), ours.state_dict()))
    return ours.eval()


def test_converted_official_weights_give_the_reference_outputs():
    ref = _reference()
    ours = _ours({f"module.{k}": v for k, v in ref.state_dict().items()})  # a DDP checkpoint under state_dict_ema
    x, t, cond = torch.randn(3, 4, 8, 8), torch.tensor([0, 321, 999]), torch.randn(3, 1, 16)
    with torch.no_grad():
        want, got = ref(x, t, cond), ours(x, t, cond)
        assert got.shape == want.shape == (3, 8, 8, 8)
        assert (ours.epsilon(x, t, cond) - want[:, :4]).abs().max() <= 1e-5 * want.abs().max()  # ε
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()  # and the variance half
        dropped = ours(x, t, cond, None, torch.ones(3, dtype=torch.bool))  # the fixed null, as official's
        assert (dropped - ref(x, t, cond, drop=True)).abs().max() <= 1e-5 * want.abs().max()
        assert (dropped - got).abs().max() > 1e-2  # the null is another condition: the check can fail


def test_a_t2i_checkpoint_with_masked_captions_converts_too():
    ref = _reference(caption=32, tokens=6)
    ours = _ours(ref.state_dict(), caption=32, tokens=6)
    x, t, cond = torch.randn(2, 4, 8, 8), torch.tensor([5, 600]), torch.randn(2, 6, 32)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        want = ref(x, t, cond, mask)
        assert (ours(x, t, cond, mask) - want).abs().max() <= 1e-5 * want.abs().max()


def test_a_multi_scale_checkpoint_converts_with_its_size_embedders():
    """LumosT2IMS: csize_embedder / ar_embedder onto our --micro-conditions embedders, compared on a
    non-square input (so the position table's per-grid scaling is compared too)."""
    ref = _reference(d=48, caption=32, tokens=6, sizes=True)
    ours = LumosDiT("DiT-T3/2", 8, 4, 32, arch="lumos", null_tokens=6, micro_conditions=True, downsample=8)
    ours.load_state_dict(to_ours(ref.state_dict(), ours.state_dict()))
    ours.eval()
    x, t, cond = torch.randn(2, 4, 8, 12), torch.tensor([7, 900]), torch.randn(2, 6, 32)
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    hw, ar = torch.tensor([[64.0, 96.0]] * 2), torch.tensor([[8 / 12]] * 2)  # what our model computes from x
    with torch.no_grad():
        want = ref(x, t, cond, mask, hw=hw, ar=ar)
        assert (ours(x, t, cond, mask) - want).abs().max() <= 1e-5 * want.abs().max()
        other = ref(x, t, cond, mask, hw=hw * 2, ar=ar)
        assert (other - want).abs().max() > 1e-3 * want.abs().max()  # the size matters: the check can fail
    without = LumosDiT("DiT-T3/2", 8, 4, 32, arch="lumos", null_tokens=6).state_dict()
    with pytest.raises(UserError, match="resolution_embedder.linear_1.weight: our model has no such weight"):
        to_ours(ref.state_dict(), without)


def test_an_unmapped_key_and_a_wrong_shape_fail_in_one_line():
    state = _reference().state_dict()
    own = LumosDiT("DiT-T/2", 8, 4, 16, arch="lumos").state_dict()
    with pytest.raises(UserError) as unmapped:
        to_ours({**state, "pe_embedder.mlp.0.weight": torch.zeros(1)}, own)
    assert "\n" not in str(unmapped.value) and "official key pe_embedder.mlp.0.weight: not mapped" in str(unmapped.value)
    wrong = dict(state)
    wrong["y_embedder.y_proj.fc1.weight"] = torch.zeros(64, 768)  # a 768-d condition into a 16-d model
    with pytest.raises(UserError) as shape:
        to_ours(wrong, own)
    assert "\n" not in str(shape.value)
    assert "transformer.caption_projection.linear_1.weight: shape (64, 768) in the checkpoint, (64, 16)" in str(shape.value)
    with pytest.raises(UserError, match="nothing for 2 of our weights"):
        to_ours({k: v for k, v in state.items() if not k.startswith("final_layer.linear")}, own)


def test_dit_xl2_lumos_has_the_official_parameter_count():
    """Official LumosI2I_XL_2 (input 32, 4 latent channels, pred_sigma, DINO's 768-d CLS): counted from the
    reference's layout at that size on the meta device, and ours."""
    with torch.device("meta"):
        ours = LumosDiT("DiT-XL/2", 32, 4, 768, arch="lumos", null_tokens=1)
        official = Reference(latent=32, channels=4, d=1152, heads=16, depth=28, caption=768, tokens=1)
    assert parameter_count(ours) == parameter_count(official) == 822_006_176
