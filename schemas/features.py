"""The features table: one row per image `id`, columns written by each frozen encoder.

Column names: `{name}_mean` / `{name}_std` (VAE posterior), `{name}_cls` (image encoders), with `name` the
encoder name with `-` → `_`. Tensors are `fixed_size_list<halffloat>`, which `lance.torch` reads outside
Ray; each field's metadata holds its shape. The table metadata holds one provenance record per encoder.
"""

from __future__ import annotations

import json
import math

import pyarrow as pa

from lumos.schemas.images import ID

SHARD = "shard"  # staging only: the images-table fragment a row came from, the unit of resume
PIXELS = "encoder_pixels"  # in flight only: preprocessed pixels, float32, flattened
FIELD_SHAPE = "lumos.shape"
META_ENCODER = "lumos.encoder."  # + encoder name: its provenance record (JSON)


def prefix(encoder: str) -> str:
    return encoder.replace("-", "_")


def mean_column(encoder: str) -> str:
    return f"{prefix(encoder)}_mean"


def std_column(encoder: str) -> str:
    return f"{prefix(encoder)}_std"


def cls_column(encoder: str) -> str:
    return f"{prefix(encoder)}_cls"


def tensor_field(name: str, shape: tuple[int, ...]) -> pa.Field:
    return pa.field(name, pa.list_(pa.float16(), math.prod(shape)), metadata={FIELD_SHAPE: json.dumps(list(shape))})


def shape_of(field: pa.Field) -> tuple[int, ...]:
    return tuple(json.loads(field.metadata[FIELD_SHAPE.encode()]))


def provenance_of(metadata: dict | None, encoder: str) -> dict | None:
    raw = (metadata or {}).get(META_ENCODER + encoder)
    return json.loads(raw) if raw else None


__all__ = ["ID", "SHARD", "PIXELS", "prefix", "mean_column", "std_column", "cls_column", "tensor_field",
           "shape_of", "provenance_of"]
