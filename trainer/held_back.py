"""`lumos-train --sample-every N`: a few rows of the features table are held back from training, and every N
steps the EMA model samples from their conditions into RUN/samples/step-NNNNNNN.png.

The trainer only picks the rows (the same on every rank, drawn by the seed) and reads their features; the
pictures are made by a hook the command passes in (lumos.generation's held-back grid: sampling, the VAE's
decoder, the PNG), so that training itself never loads an encoder.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from lumos.floor.errors import UserError
from lumos.schemas.images import ID
from lumos.trainer.data import FeatureColumns, as_tokens, read_captions, read_fixed, read_latents, read_padded, take_long


def hold_back(positions: np.ndarray, count: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(sorted indices into `positions` of the `count` held-back rows, for EpochOrder's `skip`; their
    positions), drawn by the seed alone: the same on every rank. O(count): `positions` is not copied."""
    if count >= len(positions):
        raise UserError(f"--sample-rows {count}: the table has only {len(positions)} usable rows")
    picked = np.sort(np.random.default_rng([seed, 7919]).choice(len(positions), count, replace=False))
    return picked, np.asarray(positions[picked], np.int64)


@dataclass
class HeldBack:
    """The held-back rows as the model sees them, and what a sample-grid hook needs to draw them."""

    ids: list
    mean: torch.Tensor  # (K, C, h, w) posterior means, unscaled
    cond: torch.Tensor  # (K, T, D): the condition tokens, normalised as in training
    mask: torch.Tensor | None  # (K, T) for text, else None
    mode: str
    provenance: dict  # the run's encoder records (the VAE to decode with)
    scaling: float
    device: torch.device
    precision: str
    seed: int
    folder: str  # RUN/samples


# A sample-grid hook: called once with the held-back rows, it returns the function that, given the EMA model
# and the step, writes that step's picture and returns its path.
SampleGrid = Callable[[HeldBack], Callable[[torch.nn.Module, int], str]]


def read_held_back(data: str, columns: FeatureColumns, positions: np.ndarray, version: int | None, *, mode: str,
                   provenance: dict, scaling: float, device: torch.device, precision: str, seed: int,
                   output: str) -> HeldBack:
    """The held-back rows' features at the run's table version; their ids go to RUN/samples/held-back.json."""
    import lance

    ds = lance.dataset(data, version=version)  # the version `positions` are of
    table = ds.take(positions, columns=[ID, *columns.names()])
    mean = read_latents(table, columns.mean, columns, ds).float().to(device)
    if columns.length is None:
        cond, mask = F.normalize(as_tokens(read_fixed(table, columns.cond, ds)).float(), dim=-1).to(device), None
    elif columns.long_cond:  # --caption mix: the short caption, or the long one where there is no short one
        cond, mask = read_captions(ds, positions, take_long(table, columns, positions, seed, None), columns)
        cond, mask = cond.float().to(device), mask.to(device)
    else:
        cond, mask = read_padded(table, columns.cond, columns.length, ds)
        cond, mask = cond.float().to(device), mask.to(device)
    folder = os.path.join(output, "samples")
    os.makedirs(folder, exist_ok=True)
    ids = table[ID].to_pylist()
    with open(os.path.join(folder, "held-back.json"), "w") as f:
        json.dump({"mode": mode, "ids": ids}, f, indent=1)
    return HeldBack(ids, mean, cond, mask, mode, provenance, scaling, device, precision, seed, folder)
