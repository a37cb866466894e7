"""Checkpoints: RUN/checkpoints/step-NNNNNNN/ holding

    model.safetensors, ema.safetensors   the weights (LumosDiT state dicts)
    state.pt                             optimizer, lr schedule, grad scaler, step: tensors and plain values
    rng-rank{r}.pt                       each DDP rank's training generator (noise, timesteps, dropout)
    config.json                          the run's full configuration, provenance included

written into a temporary folder and renamed into place (a reader never sees half a checkpoint); the last
`keep` are kept. Everything loads without unpickling arbitrary objects (safetensors, weights_only=True).
"""

from __future__ import annotations

import json
import os
import re
import shutil

import torch
from safetensors.torch import load_file, save_file

PATTERN = re.compile(r"^step-(\d+)$")


def checkpoints_dir(run: str) -> str:
    return os.path.join(run, "checkpoints")


def list_checkpoints(run: str) -> list[tuple[int, str]]:
    """(step, path) of the complete checkpoints of a run, oldest first."""
    root = checkpoints_dir(run)
    if not os.path.isdir(root):
        return []
    found = [(int(m.group(1)), os.path.join(root, name)) for name in os.listdir(root) if (m := PATTERN.match(name))]
    return sorted(found)


def latest(run_or_checkpoint: str) -> str | None:
    """A checkpoint folder itself, or the newest checkpoint of a run folder."""
    if os.path.isfile(os.path.join(run_or_checkpoint, "model.safetensors")):
        return run_or_checkpoint
    found = list_checkpoints(run_or_checkpoint)
    return found[-1][1] if found else None


def staging_dir(run: str, step: int) -> str:
    return os.path.join(checkpoints_dir(run), f".tmp-step-{step:07d}")


def write_rng(path: str, rank: int, generator: torch.Generator) -> None:
    """Every rank, into the staging folder: the state of its training generator."""
    os.makedirs(path, exist_ok=True)
    torch.save({"generator": generator.get_state()}, os.path.join(path, f"rng-rank{rank}.pt"))


def write_main_state(path: str, model, ema, optimizer, scheduler, scaler, step: int, config: dict) -> None:
    """Rank 0, into the staging folder: weights, optimizer, lr schedule, scaler, step and config."""
    os.makedirs(path, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, os.path.join(path, "model.safetensors"))
    save_file({k: v.contiguous() for k, v in ema.state_dict().items()}, os.path.join(path, "ema.safetensors"))
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict(), "step": step},
               os.path.join(path, "state.pt"))
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(config, f, indent=2, sort_keys=True)


def publish(run: str, step: int, keep: int) -> str:
    """Rank 0, after every rank wrote: rename the staging folder into place, drop the oldest."""
    final = os.path.join(checkpoints_dir(run), f"step-{step:07d}")
    shutil.rmtree(final, ignore_errors=True)
    os.replace(staging_dir(run, step), final)
    for _, old in list_checkpoints(run)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def read_config(path: str) -> dict:
    with open(os.path.join(path, "config.json")) as f:
        return json.load(f)


def read_weights(path: str, which: str = "model") -> dict:
    return load_file(os.path.join(path, f"{which}.safetensors"))


def read_state(path: str) -> dict:
    return torch.load(os.path.join(path, "state.pt"), map_location="cpu", weights_only=True)


def read_rng(path: str, rank: int) -> torch.Tensor:
    return torch.load(os.path.join(path, f"rng-rank{rank}.pt"), map_location="cpu", weights_only=True)["generator"]
