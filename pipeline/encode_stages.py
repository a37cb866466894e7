"""The Ray stages of one encode pass, for all its encoders at once:

    read (images fragment → blocks of id, shard, row, inputs)
    → Prepare   CPU task: each image decoded ONCE, then every image encoder's own resize/crop/normalisation
                from the decoded pixels; captions tokenized per text encoder
    → Encode    one actor pool per encoder (its own GPU share): in-flight columns → feature columns
    → WriteParts  CPU task: the rows of a block, per images fragment, to a part file (Arrow IPC) in staging
    → finalize  one Ray task per fragment once all its rows are in parts: put them in fragment order, check
                them against the features fragment's ids, write ONE data file for the fragment (Lance
                `write_fragments` against the pinned features table, so its field ids are the table's)

The driver sees one small row per part and one list of data-file records per fragment; feature bytes never
pass through it.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from lumos.floor import fs
from lumos.pipeline.encoders import EncoderConfig
from lumos.pipeline.encoders.base import ImageEncoder, decode_images
from lumos.schemas import features
from lumos.schemas import images as cols

WRITE_ROWS = 64  # rows handed to Lance's writer at a time: it then holds ~that much beyond the table itself
_BUILT: dict[EncoderConfig, object] = {}  # per worker process: a task stage is unpickled afresh for each task


def built(config: EncoderConfig):
    """The encoder object (its tokenizer, once loaded, included) for CPU stages, once per worker process."""
    if config not in _BUILT:
        _BUILT[config] = config.build()
    return _BUILT[config]


@dataclass
class Prepare:
    """CPU stage: decode each image once for every image encoder, tokenize captions for each text encoder;
    the images-table inputs are dropped, in-flight columns added."""

    configs: list[EncoderConfig]

    def __call__(self, batch: pa.Table) -> pa.Table:
        encoders = [built(c) for c in self.configs]
        image_encoders = [e for e in encoders if isinstance(e, ImageEncoder)]
        if image_encoders:
            decoded = decode_images(batch[cols.IMAGE].to_pylist())
            for encoder in image_encoders:
                batch = batch.append_column(encoder.in_flight(), encoder.pixels(decoded))
        for encoder in encoders:
            if not isinstance(encoder, ImageEncoder):
                batch = encoder.prepare(batch)
        inputs = {c for e in encoders for c in e.inputs()}
        return batch.drop_columns([c for c in batch.column_names if c in inputs])


@dataclass
class Encode:
    """Actor stage: one encoder, loaded once per actor; its in-flight columns in, its feature columns out."""

    config: EncoderConfig
    device: str = "cpu"
    encoder: object = field(default=None, init=False, repr=False)

    def __post_init__(self):
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


@dataclass
class WriteParts:
    """CPU stage: encoded rows → one part file per images fragment in the batch (row offset, id, feature
    columns); out: one small row per part (shard, rows, path)."""

    staging: str
    configs: list[EncoderConfig]

    def __call__(self, batch: pa.Table) -> pa.Table:
        schema = pa.schema([pa.field(features.ROW, pa.int32()), pa.field(cols.ID, pa.string()),
                            *pass_schema(self.configs)])
        out = []
        for shard in pc.unique(batch[features.SHARD]).to_pylist():
            rows = batch.filter(pc.equal(batch[features.SHARD], shard)).select(schema.names).cast(schema)
            path = fs.join(self.staging, str(shard), f"{uuid.uuid4().hex}.arrow")
            fs.write_bytes(path, _ipc_bytes(rows))
            out.append({features.SHARD: shard, features.PART_ROWS: rows.num_rows, features.PART_PATH: path})
        return pa.Table.from_pylist(out, schema=pa.schema([(features.SHARD, pa.int64()),
                                                           (features.PART_ROWS, pa.int64()),
                                                           (features.PART_PATH, pa.string())]))


def _ipc_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue().to_pybytes()


def _read_part(path: str) -> pa.Table:
    return pa.ipc.open_stream(pa.py_buffer(fs.read_bytes(path))).read_all()


def finalize_fragment(output_uri: str, version: int, fragment_id: int, parts: list[str],
                      configs: list[EncoderConfig]) -> tuple[int, list[dict]]:
    """All the parts of one fragment → one data file of the pass's columns for features fragment
    `fragment_id` (not committed). Returns (fragment id, the data-file records to graft onto it)."""
    from lance.fragment import write_fragments

    from lumos.floor.fragment_reader import open_version

    ds = open_version(output_uri, version)
    table = pa.concat_tables([_read_part(p) for p in parts]).sort_by(features.ROW)
    ids = ds.get_fragment(fragment_id).to_table(columns=[cols.ID])[cols.ID]
    if not np.array_equal(table[features.ROW].to_numpy(), np.arange(len(ids))) or not table[cols.ID].equals(ids):
        raise RuntimeError(f"features fragment {fragment_id}: the encoded rows do not match its {len(ids)} ids")
    schema = pass_schema(configs)
    table = table.select(schema.names)
    batches = pa.RecordBatchReader.from_batches(schema, table.to_batches(max_chunksize=WRITE_ROWS))
    written = write_fragments(batches, ds, schema=schema, max_rows_per_file=len(ids) + 1)
    if len(written) != 1:
        raise RuntimeError(f"features fragment {fragment_id}: {len(written)} fragments written, expected 1")
    for path in parts:
        fs.remove(path)
    return fragment_id, written[0].to_json()["files"]
