"""DDPM as PixArt trains it: 1000 steps, linear betas 1e-4 → 0.02, ε-prediction with an MSE loss; for a model
that also predicts its variance (`--arch lumos`, PixArt's `pred_sigma`), IDDPM's hybrid loss: the ε-MSE plus
the variational bound on the variance alone (ε held fixed in it), with the variance interpolated in log space
between β_t and the posterior's β̃_t by the model's v ∈ [-1, 1] (Nichol & Dhariwal's learned range)."""

from __future__ import annotations

import math

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
        previous = np.append(1.0, alphas_cumprod[:-1])
        posterior_var = betas * (1.0 - previous) / (1.0 - alphas_cumprod)  # β̃_t
        tensors = {
            "sqrt_recip_ab": np.sqrt(1.0 / alphas_cumprod), "sqrt_recipm1_ab": np.sqrt(1.0 / alphas_cumprod - 1),
            # log β̃_t, its first value (0) replaced by the second's, as IDDPM clips it
            "posterior_log_var": np.log(np.append(posterior_var[1], posterior_var[1:])), "log_betas": np.log(betas),
            "posterior_c0": betas * np.sqrt(previous) / (1.0 - alphas_cumprod),
            "posterior_ct": (1.0 - previous) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod)}
        for name, values in tensors.items():
            setattr(self, name, torch.from_numpy(values).float().to(device))

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

    def vlb(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
            v: torch.Tensor) -> torch.Tensor:
        """The variational bound's term at t of each sample, in bits per dimension: (N,). KL(q(x_{t-1} | x_t, x_0)
        ‖ p(x_{t-1} | x_t)) for t > 0, the decoder's negative log-likelihood of x_0 at t = 0. `eps` is the
        model's ε (pass it detached: the term trains the variance only), `v` its variance output."""
        x0, xt, eps, v = x0.float(), xt.float(), eps.float(), v.float()
        shape = (-1,) + (1,) * (x0.dim() - 1)

        def at(values):
            return values[t].view(shape)

        true_mean = at(self.posterior_c0) * x0 + at(self.posterior_ct) * xt
        true_log_var = at(self.posterior_log_var)
        x0_pred = at(self.sqrt_recip_ab) * xt - at(self.sqrt_recipm1_ab) * eps
        mean = at(self.posterior_c0) * x0_pred + at(self.posterior_ct) * xt
        frac = (v + 1) / 2
        log_var = frac * at(self.log_betas) + (1 - frac) * true_log_var
        kl = 0.5 * (-1.0 + log_var - true_log_var + torch.exp(true_log_var - log_var)
                    + (true_mean - mean) ** 2 * torch.exp(-log_var))
        nll = -_discretized_gaussian_log_likelihood(x0, mean, 0.5 * log_var)
        per_dim = torch.where((t == 0).view(shape), nll, kl) / math.log(2.0)
        return per_dim.flatten(1).mean(1)


def _standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """Φ(x) by the tanh approximation IDDPM uses."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) of data in [-1, 1] cut into 256 bins, under N(mean, exp(log_scale)²), per element."""
    centred, inv_std = x - mean, torch.exp(-log_scale)
    cdf_plus = _standard_normal_cdf(inv_std * (centred + 1.0 / 255.0))
    cdf_min = _standard_normal_cdf(inv_std * (centred - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))
