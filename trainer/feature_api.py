"""Cached features in your own PyTorch loop: the trainer's own data path (trainer/data.py) and its own
step input (`prepare`), as a DataLoader.

    from lumos.trainer.feature_api import feature_loader

    loader = feature_loader("features.lance", mode="i2i", latents="sd-vae", condition="dino-b",
                            batch_size=64, rank=0, world=1, seed=0)
    for batch in loader:              # forever: count steps yourself (loader.dataset.steps_per_epoch)
        x0 = batch["x0"]              # (N, 4, 32, 32): (mean + std·ε) · the VAE's scaling factor
        cond = batch["cond"]          # i2i: (N, 1, 768) L2-normalised CLS (or (N, T, 768) with
                                      # condition_tokens="all" etc.); t2i: (N, L, 4096) T5 tokens
        mask = batch.get("mask")      # t2i: (N, L), 1 on real tokens
        weight = batch["weight"]      # (N,): 0 on the filler row an epoch's last step may carry

Rows are those the trainer would train on, in the same order for the same seed, batch size, rank and world
(every usable row once an epoch across ranks); ε is drawn from a generator seeded by (seed, rank, step), so a
batch depends on its step alone.
"""

from __future__ import annotations

import hashlib
import os
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset

from lumos.trainer.buckets import BucketOrder
from lumos.trainer.data import EpochOrder, FeatureStream, counts_path, open_positions, positions_file


def prepare(batch: dict, scaling: float, mode: str, generator: torch.Generator, device=None) -> dict:
    """A loaded batch → what a training step consumes, as `lumos-train` does it: latents drawn from the stored
    posterior (PixArt, REPA) times the VAE's scaling factor, the condition in float (I2I: L2-normalised, as the
    official Lumos), the text mask, the row weights. ε comes from `generator` (on `device`)."""
    device = device or torch.device("cpu")
    mean = batch["mean"].to(device, non_blocking=True).float()
    std = batch["std"].to(device, non_blocking=True).float()
    x0 = (mean + std * torch.randn(mean.shape, device=device, generator=generator)) * scaling  # (N, 4, h, w)
    cond = batch["cond"].to(device, non_blocking=True).float()  # (N, L, C)
    if mode == "i2i":
        cond = F.normalize(cond, dim=-1)
    out = {"x0": x0, "cond": cond, "weight": batch["weight"].to(device)}
    if "mask" in batch:
        out["mask"] = batch["mask"].to(device)
    return out


def step_seed(seed: int, rank: int, step: int) -> int:
    """The seed of ε at (seed, rank, step) for `feature_loader`'s batches."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{rank}:{step}".encode()).digest()[:8], "little")


class ReadyBatches(IterableDataset):
    """FeatureStream's batches through `prepare`, with their step and epoch."""

    def __init__(self, stream: FeatureStream, scaling: float, mode: str, seed: int, rank: int):
        self.stream, self.scaling, self.mode, self.seed, self.rank = stream, scaling, mode, seed, rank
        self.steps_per_epoch = stream.order.steps_per_epoch

    def __iter__(self):
        for batch in self.stream:
            generator = torch.Generator().manual_seed(step_seed(self.seed, self.rank, batch["step"]))
            yield {**prepare(batch, self.scaling, self.mode, generator), "step": batch["step"],
                   "epoch": batch["epoch"]}


def feature_loader(data: str, mode: str = "i2i", latents: str = "sd-vae", condition: str = "dino-b",
                   condition_tokens: str = "cls", text: str = "t5-xxl", caption: str = "short",
                   caption_mix: float = 0.5, batch_size: int = 256, rank: int = 0,
                   world: int = 1, seed: int = 0, epoch: int = 0, step: int | None = None, workers: int = 0,
                   cache: str | None = None) -> DataLoader:
    """A DataLoader of ready-to-train batches of `data` (a features table made by lumos-encode), starting at
    `step` (default: the first step of `epoch`). `cache`: where the usable rows' positions file is written
    (default: a folder under the system's temporary directory); a UserError names what the table lacks."""
    import lance

    from lumos.schemas import features
    from lumos.trainer.train import SCALING_FACTOR_KEY, TrainConfig, columns_and_provenance

    config = TrainConfig.of(mode, data=data, output="", latents=latents, condition=condition,
                            condition_tokens=condition_tokens, text=text, caption=caption, caption_mix=caption_mix,
                            batch_size=batch_size, seed=seed)
    meta = features.str_metadata(lance.dataset(data).schema.metadata)
    columns, provenance = columns_and_provenance(config, meta)
    folder = cache or os.path.join(tempfile.gettempdir(), "lumos-positions")
    os.makedirs(folder, exist_ok=True)
    path, version, _ = positions_file(data, columns, folder)
    order = EpochOrder(open_positions(path), batch_size, world, rank, seed) if not columns.bucket else \
        BucketOrder(open_positions(path), np.load(counts_path(path)), batch_size, world, rank, seed)
    start = epoch * order.steps_per_epoch if step is None else step
    stream = FeatureStream(data, columns, order, start=start, version=version)
    ready = ReadyBatches(stream, float(provenance["latents"].get(SCALING_FACTOR_KEY, 0.18215)), mode, seed, rank)
    return DataLoader(ready, batch_size=None, num_workers=workers,
                      multiprocessing_context="spawn" if workers else None)
