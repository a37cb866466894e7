"""The DiT size registry against diffusers' PixArt-α XL/2, and the diffusion bookkeeping."""

import torch

from lumos.trainer.diffusion import Diffusion
from lumos.trainer.models import DIT_MODELS, PIXART_ALPHA_XL_2, LumosDiT, parameter_count, pixart_transformer_class


def test_dit_xl2_matches_pixart_alpha_xl2_parameter_count():
    with torch.device("meta"):
        ours = LumosDiT("DiT-XL/2", latent_size=32, latent_channels=4, caption_channels=4096)
        pixart = pixart_transformer_class()(**PIXART_ALPHA_XL_2)
    n_ours, n_pixart = parameter_count(ours), parameter_count(pixart)
    print(f"DiT-XL/2 (caption channels 4096): {n_ours:,} parameters; diffusers PixArt-α XL/2: {n_pixart:,}")
    assert abs(n_ours - n_pixart) / n_pixart < 0.01
    block = ours.transformer.transformer_blocks[0]
    assert len(ours.transformer.transformer_blocks) == 28 and block.attn1.heads == 16
    assert block.attn1.to_q.in_features == 1152 and block.attn2 is not None  # self-attn → cross-attn → MLP
    with torch.device("meta"):
        i2i = LumosDiT("DiT-XL/2", 32, 4, caption_channels=768)  # DINO CLS: a 768-d token
    assert i2i.transformer.caption_projection.linear_1.in_features == 768
    assert set(DIT_MODELS) == {"DiT-T/2", "DiT-T3/2", "DiT-S/2", "DiT-B/2", "DiT-L/2", "DiT-XL/2"}


def test_null_condition_replaces_dropped_rows_only():
    model = LumosDiT("DiT-T/2", latent_size=8, latent_channels=4, caption_channels=16)
    cond, mask = torch.randn(3, 5, 16), torch.ones(3, 5, dtype=torch.long)
    new, new_mask = model.drop(cond, mask, torch.tensor([False, True, False]))
    assert torch.equal(new[0], cond[0]) and torch.equal(new[2], cond[2])
    assert torch.equal(new[1, 0], model.null.detach()) and not new[1, 1:].any()
    assert new_mask[1].tolist() == [1, 0, 0, 0, 0] and new_mask[0].tolist() == [1] * 5


def test_ddpm_schedule_is_pixarts_linear_one():
    d = Diffusion()
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    ab = torch.cumprod(1 - betas, 0)
    assert torch.allclose(d.sqrt_ab.double(), ab.sqrt(), atol=1e-6)
    x0, noise = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    t = torch.tensor([0, 999])
    xt = d.q_sample(x0, t, noise)
    assert torch.allclose(xt[1], ab[999].sqrt().float() * x0[1] + (1 - ab[999]).sqrt().float() * noise[1], atol=1e-6)
    weight = torch.tensor([1.0, 0.0])  # a weight-0 row adds nothing
    assert torch.isclose(d.loss(noise + 1, noise, weight), torch.tensor(1.0))
