"""The DiT's FLOP count, from its shapes, agrees with torch.utils.flop_counter on the real model (DiT-S/2 at
256 px, I2I and T2I conditions) within 5%: what MFU in bench/train_gpu.py rests on."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from lumos.trainer.flops import forward_flops, train_flops
from lumos.trainer.models import LumosDiT


@pytest.mark.parametrize("cond_tokens,cond_channels", [(1, 768), (120, 4096)])
def test_forward_flops_match_the_flop_counter(cond_tokens, cond_channels):
    with torch.device("meta"):  # shapes only: the counter needs no values
        model = LumosDiT("DiT-S/2", 32, 4, cond_channels)
        x, t = torch.zeros(2, 4, 32, 32), torch.zeros(2, dtype=torch.long)
        cond = torch.zeros(2, cond_tokens, cond_channels)
    with FlopCounterMode(display=False) as counter:
        model(x, t, cond)
    counted = counter.get_total_flops() / 2  # per sample
    ours = forward_flops("DiT-S/2", 32, 4, cond_tokens, cond_channels)
    assert abs(ours - counted) / counted < 0.05, (ours, counted)
    assert train_flops("DiT-S/2", 32, 4, cond_tokens, cond_channels) == 3 * ours
