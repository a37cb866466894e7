"""DDPM as PixArt trains it: 1000 steps, linear betas 1e-4 → 0.02, ε-prediction with an MSE loss."""

from __future__ import annotations

import numpy as np
import torch

NUM_TIMESTEPS = 1000
BETA_START, BETA_END = 1e-4, 0.02


class Diffusion:
    def __init__(self, steps: int = NUM_TIMESTEPS, beta_start: float = BETA_START, beta_end: float = BETA_END,
                 device: torch.device | str = "cpu"):
        betas = np.linspace(beta_start, beta_end, steps, dtype=np.float64)
        alphas_cumprod = np.cumprod(1.0 - betas)
        self.steps = steps
        # on the training device once: not a host-to-device copy every step
        self.sqrt_ab = torch.from_numpy(np.sqrt(alphas_cumprod)).float().to(device)  # (T,)
        self.sqrt_1m_ab = torch.from_numpy(np.sqrt(1.0 - alphas_cumprod)).float().to(device)

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(ᾱ_t) x0 + sqrt(1 - ᾱ_t) ε."""
        shape = (-1,) + (1,) * (x0.dim() - 1)
        a = self.sqrt_ab[t].view(shape)
        b = self.sqrt_1m_ab[t].view(shape)
        return a * x0 + b * noise

    @staticmethod
    def per_sample_loss(eps_pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """The ε-MSE of each sample: (N,)."""
        return (eps_pred.float() - noise.float()).pow(2).flatten(1).mean(1)

    @staticmethod
    def loss(eps_pred: torch.Tensor, noise: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        """Mean over the samples of weight > 0 (a weight 0 row only keeps DDP ranks in step) of the ε-MSE."""
        return (Diffusion.per_sample_loss(eps_pred, noise) * weight).sum() / weight.sum().clamp(min=1.0)
