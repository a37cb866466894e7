"""Shared by the trainer benchmarks: an I2I features table with the exact layout `lumos-encode --encoder
sd-vae --encoder dino-b` writes (sd-vae@256 mean + std, 4×32×32 fp16 each; dino-b CLS, 768 fp16; their
provenance records), filled with random values so that tens of thousands of rows take seconds, not the
hours two random-weight encoders would take on a CPU."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa

from lumos.pipeline.encoders import EncoderConfig
from lumos.schemas import features
from lumos.schemas.images import ID


def i2i_features_table(path: str, rows: int, chunk: int = 4096) -> str:
    import lance

    encoders = [EncoderConfig("sd-vae", random_weights=True).build(), EncoderConfig("dino-b", random_weights=True).build()]
    fields = [f for e in encoders for f in e.fields()]
    meta = {features.META_ENCODER + e.name: json.dumps({**e.provenance(), "images": "bench"}) for e in encoders}
    schema = pa.schema([pa.field(ID, pa.string()), *fields], metadata=meta)
    rng = np.random.default_rng(0)

    def batches():
        for start in range(0, rows, chunk):
            n = min(chunk, rows - start)
            columns = [pa.array([f"{i:012d}" for i in range(start, start + n)])]
            for f in fields:
                if pa.types.is_boolean(f.type):  # `_ok`: every row encoded
                    columns.append(pa.array(np.ones(n, bool)))
                    continue
                values = rng.standard_normal(n * f.type.list_size, dtype=np.float32).astype(np.float16)
                if f.name.endswith("_std"):
                    values = np.abs(values) * np.float16(0.05)
                columns.append(pa.FixedSizeListArray.from_arrays(pa.array(values), f.type.list_size))
            yield pa.record_batch(columns, schema=schema)

    # as lumos-encode writes it: one write, Lance's default file size, the features table's format version
    lance.write_dataset(pa.RecordBatchReader.from_batches(schema, batches()), path, schema=schema,
                        data_storage_version=features.STORAGE_VERSION)
    return path
