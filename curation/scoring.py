"""Aesthetic scoring as Ray Data stages: CLIP preprocessing in CPU tasks, the model in an actor pool
(one GPU per actor when the cluster has GPUs, CPU otherwise)."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from lumos.curation.aesthetic import SPECS, load_aesthetic_model, preprocess
from lumos.floor.stages import Placement, Stage, run_stage
from lumos.schemas import images as cols

PIXELS = "clip_pixels"  # in flight only: the CLIP-preprocessed image, (3, S, S) float32 flattened


@dataclass
class ClipPixels(Stage):
    """CPU stage: decode each stored image and apply CLIP's transform. Rows without an image get zeros
    (the scorer leaves their score null)."""

    image_size: int
    batch_size: int = 64

    def placement(self) -> Placement:
        return Placement(batch_size=self.batch_size)

    def __call__(self, batch: pa.Table) -> pa.Table:
        transform, size = preprocess(self.image_size), 3 * self.image_size * self.image_size
        pixels = np.zeros((batch.num_rows, size), np.float32)
        for i, data in enumerate(batch[cols.IMAGE].to_pylist()):
            if data is not None:
                with Image.open(io.BytesIO(data)) as im:
                    pixels[i] = transform(im).numpy().reshape(-1)
        column = pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), size)
        return batch.append_column(PIXELS, column)


@dataclass
class AestheticScorer(Stage):
    """Model stage: the model is loaded once per actor, then scores every batch it is given."""

    model: str
    clip_weights: str | None = None
    mlp_weights: str | None = None
    device: str = "cpu"
    threads: int | None = None  # CPU only: torch threads; None: every core of the actor's node
    batch_size: int = 64
    actors: int = 1
    net: object = field(init=False, repr=False, default=None)

    def placement(self) -> Placement:
        gpu = self.device == "cuda"
        return Placement(batch_size=self.batch_size, actors=self.actors, num_gpus=1 if gpu else 0)

    def setup(self) -> None:
        self.net = load_aesthetic_model(self.model, self.clip_weights, self.mlp_weights, self.device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        if self.device == "cpu":
            # Without GPUs the model is the bottleneck, so it may use every core of its node (Ray would
            # give an actor one thread); set here, not in setup, as Ray calls batches on another thread.
            torch.set_num_threads(self.threads or len(os.sched_getaffinity(0)))

        side = SPECS[self.model].image_size
        valid = pc.is_valid(batch[cols.IMAGE]).to_numpy(zero_copy_only=False)
        flat = batch[PIXELS].combine_chunks().flatten().to_numpy()
        pixels = torch.from_numpy(flat.reshape(batch.num_rows, 3, side, side)[valid])
        scores = np.full(batch.num_rows, np.nan, np.float32)
        if valid.any():
            scores[valid] = self.net(pixels.to(self.device)).float().cpu().numpy()
        column = pa.array(scores, pa.float32(), mask=~valid)
        batch = batch.drop_columns([PIXELS])
        if cols.AESTHETIC not in batch.schema.names:
            return batch.append_column(cols.AESTHETIC, column)
        return batch.set_column(batch.schema.get_field_index(cols.AESTHETIC), cols.AESTHETIC, column)


def add_scores(ds, model: str, clip_weights: str | None = None, mlp_weights: str | None = None,
               batch_size: int = 64):
    """`ds` (rows with an `image` column) with its `aesthetic` column (re)computed."""
    import ray

    gpus = int(ray.cluster_resources().get("GPU", 0))
    ds = run_stage(ds, ClipPixels(SPECS[model].image_size, batch_size))
    return run_stage(ds, AestheticScorer(model, clip_weights, mlp_weights, device="cuda" if gpus else "cpu",
                                         batch_size=batch_size, actors=max(gpus, 1)))
