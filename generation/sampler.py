"""Sampling a run: its EMA DiT, diffusers' DPM-Solver++ (PixArt's sampler) or DDIM on the training betas,
classifier-free guidance against the learned null condition.

The loop is diffusers' PixArtAlphaPipeline's, step for step (noise from one CPU generator × the scheduler's
initial sigma, [uncond, cond] in one batch, ε = u + cfg·(c − u)), so an exported run gives the same latents
in that pipeline (tests/generation/test_export.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lumos.floor.errors import UserError
from lumos.trainer import checkpoint as ckpt
from lumos.trainer.config import flat_record
from lumos.trainer.diffusion import BETA_END, BETA_START, NUM_TIMESTEPS
from lumos.trainer.models import LumosDiT, autocast

SCHEDULERS = ("dpm", "ddim")


def scheduler_config(name: str) -> dict:
    """The diffusers scheduler configuration for a run (the betas it was trained with)."""
    common = dict(num_train_timesteps=NUM_TIMESTEPS, beta_start=BETA_START, beta_end=BETA_END,
                  beta_schedule="linear", prediction_type="epsilon")
    if name == "dpm":
        return {"_class_name": "DPMSolverMultistepScheduler", **common, "algorithm_type": "dpmsolver++",
                "solver_order": 2}
    if name == "ddim":
        return {"_class_name": "DDIMScheduler", **common, "clip_sample": False, "set_alpha_to_one": False}
    raise UserError(f"--scheduler {name}: expected one of {', '.join(SCHEDULERS)}")


def make_scheduler(name: str):
    import diffusers

    config = scheduler_config(name)
    return getattr(diffusers, config["_class_name"]).from_config(config)


@dataclass
class Trained:
    """A run's EMA model and what describes it (config.json of its checkpoint)."""

    model: LumosDiT
    config: dict
    path: str

    @property
    def settings(self) -> dict:
        """The run's training settings by option name (lumos-train's flags)."""
        return flat_record(self.config["train"])

    @property
    def mode(self) -> str:
        return self.config["train"]["mode"]

    @property
    def bucket_shapes(self) -> list | None:
        """Bucketed latents: every aspect-ratio bin's latent shape (None: one shape)."""
        return self.config["columns"].get("bucket_shapes")

    @property
    def latent_shape(self) -> tuple[int, ...]:
        """The run's latent shape (bucketed runs: the square bin's)."""
        if self.bucket_shapes:
            return next(tuple(s) for s in self.bucket_shapes if s[1] == s[2])
        return tuple(self.config["provenance"]["latents"]["shapes"][self.config["columns"]["mean"]])

    @property
    def downsample(self) -> int:
        """Pixels per latent cell: 8 for the SD VAE, 1 for `pixels`."""
        h = self.latent_shape[1]
        return max(1, int(self.config["provenance"]["latents"].get("resolution", h)) // h)

    def bucket_at(self, height: int, width: int) -> int:
        """Bucketed runs: the bin PixArtAlphaPipeline's resolution binning takes height × width to."""
        from lumos.pipeline.encoders.aspect_buckets import bucket_of

        return bucket_of(width, height, int(self.config["provenance"]["latents"]["resolution"]))

    def latent_shape_at(self, height: int | None, width: int | None) -> tuple[int, ...]:
        """The latent shape of an image of height × width pixels (None: the run's own side), which must be
        a multiple of the VAE's downsampling × the DiT's patch; a bucketed run samples at the bin the size
        is nearest (as PixArtAlphaPipeline with resolution binning)."""
        channels, h, w = self.latent_shape
        factor = self.downsample
        if self.bucket_shapes and (height or width):
            return tuple(self.bucket_shapes[self.bucket_at(height or h * factor, width or w * factor)])
        step = factor * 2  # the DiT's patch is 2 latents
        out = []
        for name, value, own in (("--height", height, h), ("--width", width, w)):
            if value is None:
                out.append(own)
                continue
            if value < step or value % step:
                raise UserError(f"{name} {value}: must be a positive multiple of {step} (the VAE's {factor} "
                                "pixels per latent × the DiT's patch of 2)")
            out.append(value // factor)
        return (channels, *out)

    @property
    def scaling(self) -> float:
        return float(self.config["scaling_factor"])


def find_checkpoint(run_or_checkpoint: str) -> tuple[str, dict]:
    """The newest checkpoint of a run folder (or a checkpoint folder itself) and its config."""
    path = ckpt.latest(run_or_checkpoint)
    if path is None:
        raise UserError(f"--checkpoint {run_or_checkpoint}: no checkpoint there (a lumos-train run folder or "
                        "one of its checkpoints/step-N folders)")
    return path, ckpt.read_config(path)


def load_trained(run_or_checkpoint: str, device: torch.device | str = "cpu") -> Trained:
    """The EMA weights of a run folder's newest checkpoint (or of a checkpoint folder)."""
    path, config = find_checkpoint(run_or_checkpoint)
    shapes = config["provenance"]["condition"]["shapes"]
    described = Trained(None, config, path)
    channels, _, size = described.latent_shape
    settings = described.settings
    model = LumosDiT(settings["model"], size, channels, shapes[config["columns"]["cond"]][-1],
                     hide_transformers=False, micro_conditions=settings.get("micro_conditions", False),
                     downsample=described.downsample, arch=settings.get("arch", "pixart"),
                     null_tokens=null_tokens_of(config))
    model.load_state_dict(ckpt.read_weights(path, "ema"))
    return Trained(model.to(device).eval().requires_grad_(False), config, path)


def null_tokens_of(config: dict) -> int:
    """--arch lumos runs: the fixed null's tokens (the condition's; T2I 120), from the run's record."""
    from lumos.trainer.lumos_arch import T2I_NULL_TOKENS

    if config["train"]["mode"] == "t2i":
        return T2I_NULL_TOKENS
    shape = config["provenance"]["condition"]["shapes"][config["columns"]["cond"]]
    return shape[0] if len(shape) == 2 else 1


@torch.no_grad()
def generate(model: LumosDiT, cond: torch.Tensor, mask: torch.Tensor | None, *, latent_shape, num: int = 1,
             steps: int = 20, cfg: float = 4.5, scheduler: str = "dpm", seed: int = 0,
             noise: torch.Tensor | None = None, precision: str = "fp32") -> torch.Tensor:
    """`num` samples for each condition row: cond (P, L, C), mask (P, L) or None → latents (P·num, ...),
    row p's samples at p·num … p·num + num − 1. `noise` (P·num, ...) replaces the seeded draw."""
    if steps < 1:
        raise UserError("--steps must be >= 1")
    device = cond.device
    cond = cond.repeat_interleave(num, 0)
    mask = mask.repeat_interleave(num, 0) if mask is not None else None
    n = cond.shape[0]
    sched = make_scheduler(scheduler)
    sched.set_timesteps(steps, device=device)
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(0)
    if noise is None:  # a CPU generator: the same seed gives the same samples on any device
        noise = torch.randn((n, *latent_shape), generator=torch.Generator("cpu").manual_seed(seed))
    latents = noise.to(device, torch.float32) * sched.init_noise_sigma
    guided = cfg > 1.0
    if guided:  # [unconditional, conditional], as PixArtAlphaPipeline
        null, null_mask = model.drop(cond, mask, torch.ones(n, dtype=torch.bool, device=device))
        cond = torch.cat([null, cond])
        mask = torch.cat([null_mask, mask]) if mask is not None else None
    for t in sched.timesteps:
        x = sched.scale_model_input(torch.cat([latents] * 2) if guided else latents, t)
        with autocast(precision, device):
            eps = model.epsilon(x, t[None].expand(x.shape[0]), cond, mask).float()  # lumos: its ε half
        if guided:
            uncond, conditional = eps.chunk(2)
            eps = uncond + cfg * (conditional - uncond)
        latents = sched.step(eps, t, latents, return_dict=False)[0]
    return latents


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between two vectors (the last dimension)."""
    a_n, b_n = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    omega = torch.arccos((a_n * b_n).sum(-1, keepdim=True).clamp(-1, 1))
    so = torch.sin(omega)
    if float(so.abs().min()) < 1e-6:  # (anti)parallel: a straight line is as good
        return (1 - t) * a + t * b
    return torch.sin((1 - t) * omega) / so * a + torch.sin(t * omega) / so * b

