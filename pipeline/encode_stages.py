"""The Ray stages of one encode pass, for all its encoders at once:

    read (images fragment → blocks of id, shard, row, inputs)
    → Prepare   CPU task: each image decoded ONCE, then every image encoder's own resize/crop/normalisation
                from the decoded pixels; captions tokenized per text encoder
    → Encode    one actor pool per encoder (its own GPU share): in-flight columns → feature columns
    → WriteParts, finalize: one data file a features fragment, written by workers (floor/column_writer.py)

The driver sees one small row per part and one list of data-file records per fragment; feature bytes never
pass through it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pyarrow as pa

from lumos.floor.stages import Placement, Stage
from lumos.pipeline.encoders import EncoderConfig
from lumos.pipeline.encoders.base import ImageEncoder, decode_images
from lumos.schemas import images as cols

_BUILT: dict[EncoderConfig, object] = {}  # per worker process: a task stage is unpickled afresh for each task


def built(config: EncoderConfig):
    """The encoder object (its tokenizer, once loaded, included) for CPU stages, once per worker process."""
    if config not in _BUILT:
        _BUILT[config] = config.build()
    return _BUILT[config]


@dataclass
class Prepare(Stage):
    """CPU stage: decode each image once for every image encoder, tokenize captions for each text encoder;
    the images-table inputs are dropped, in-flight columns added."""

    configs: list[EncoderConfig]
    batch_size: int | None = None

    def placement(self) -> Placement:
        return Placement(batch_size=self.batch_size)

    def __call__(self, batch: pa.Table) -> pa.Table:
        encoders = [built(c) for c in self.configs]
        image_encoders = [e for e in encoders if isinstance(e, ImageEncoder)]
        if image_encoders:
            decoded = decode_images(batch[cols.IMAGE].to_pylist())
            for encoder in image_encoders:
                for name, column in encoder.prepared(decoded).items():
                    batch = batch.append_column(name, column)
        for encoder in encoders:
            if not isinstance(encoder, ImageEncoder):
                batch = encoder.prepare(batch)
        inputs = {c for e in encoders for c in e.inputs()}
        return batch.drop_columns([c for c in batch.column_names if c in inputs])


@dataclass
class Encode(Stage):
    """Model stage: one encoder, loaded once per actor; its in-flight columns in, its feature columns out. Its
    placement (actors, GPU share) is the pass's choice (encode_job._gpu_split)."""

    config: EncoderConfig
    device: str = "cpu"
    encoder: object = field(default=None, init=False, repr=False)

    def setup(self) -> None:
        self.encoder = self.config.build().load(self.device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        if self.device == "cpu":  # the model is the bottleneck: every core of the node (see scoring.py)
            torch.set_num_threads(len(os.sched_getaffinity(0)))
        out = self.encoder.encode(batch)
        in_flight = self.encoder.in_flight()
        in_flight = [in_flight] if isinstance(in_flight, str) else in_flight
        batch = batch.drop_columns([c for c in batch.column_names if c in in_flight or c in out])
        for name, values in out.items():
            batch = batch.append_column(name, values)
        return batch


def pass_schema(configs: list[EncoderConfig]) -> pa.Schema:
    """The columns one pass writes, in order."""
    return pa.schema([f for c in configs for f in built(c).fields()])
