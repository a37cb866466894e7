"""The features table: one row per image `id`, columns written by each frozen encoder.

Column names, with `name` the encoder name with `-` → `_`:
    `{name}_mean` / `{name}_std`    VAE posterior                          fixed_size_list<halffloat>
    `{name}_cls`, `{name}_tokens`   image encoders: CLS, token set          fixed_size_list<halffloat>
    `{name}_tokens` / `{name}_len`  text encoders: the valid tokens only    list<halffloat> (len × D), int32
    `{name}_long_tokens` / `{name}_long_len`   the same for the long caption
Fixed-size tensors are `fixed_size_list<halffloat>`, which `lance.torch` reads outside Ray; each field's
metadata holds its shape (-1: the length varies by row). The table metadata holds one provenance record per
encoder. There is one row per image id; a row an encoder could not encode (an image that does not decode,
no caption) holds nulls in that encoder's columns.
"""

from __future__ import annotations

import json
import math

import pyarrow as pa

from lumos.schemas.images import ID

SHARD = "shard"  # staging only: the images-table fragment a row came from, the unit of resume
PIXELS = "encoder_pixels"  # in flight only: preprocessed pixels, float32, flattened
# in flight only: what a write task tells the driver about a part of a shard it wrote
STAGED_ROWS, STAGED_FRAGMENTS, STAGED_TALLY = "staged_rows", "staged_fragments", "staged_tally"
FIELD_SHAPE = "lumos.shape"
# Lance file format of the features table: 2.1 takes random rows ~1.3-1.6x faster than 2.0 (the trainer's
# shuffled reads), measured with bench/train_loader.py's rows on pylance 14.
STORAGE_VERSION = "2.1"
META_ENCODER = "lumos.encoder."  # + encoder name: its provenance record (JSON)


def prefix(encoder: str) -> str:
    return encoder.replace("-", "_")


def mean_column(encoder: str) -> str:
    return f"{prefix(encoder)}_mean"


def std_column(encoder: str) -> str:
    return f"{prefix(encoder)}_std"


def cls_column(encoder: str) -> str:
    return f"{prefix(encoder)}_cls"


def tokens_column(encoder: str) -> str:
    return f"{prefix(encoder)}_tokens"


def len_column(encoder: str) -> str:
    return f"{prefix(encoder)}_len"


def long_tokens_column(encoder: str) -> str:
    return f"{prefix(encoder)}_long_tokens"


def long_len_column(encoder: str) -> str:
    return f"{prefix(encoder)}_long_len"


def token_ids_column(caption_column: str) -> str:
    """In flight only: a caption's token ids, padded."""
    return f"encoder_ids_{caption_column}"


def tensor_field(name: str, shape: tuple[int, ...]) -> pa.Field:
    return pa.field(name, pa.list_(pa.float16(), math.prod(shape)), metadata={FIELD_SHAPE: json.dumps(list(shape))})


def token_list_field(name: str, dim: int) -> pa.Field:
    """A variable number of `dim`-vectors a row, flattened: list<halffloat> of length n × dim."""
    return pa.field(name, pa.list_(pa.float16()), metadata={FIELD_SHAPE: json.dumps([-1, dim])})


def length_field(name: str) -> pa.Field:
    """How many vectors a row of a token_list_field holds (null: nothing to encode)."""
    return pa.field(name, pa.int32(), metadata={FIELD_SHAPE: json.dumps([])})


def shape_of(field: pa.Field) -> tuple[int, ...]:
    return tuple(json.loads(field.metadata[FIELD_SHAPE.encode()]))


def str_metadata(meta) -> dict:
    """Arrow schema metadata (bytes → bytes) as str → str."""
    return {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
            for k, v in (meta or {}).items()}


def provenance_of(metadata: dict | None, encoder: str) -> dict | None:
    raw = (metadata or {}).get(META_ENCODER + encoder)
    return json.loads(raw) if raw else None


__all__ = ["ID", "SHARD", "PIXELS", "STAGED_ROWS", "STAGED_FRAGMENTS", "STAGED_TALLY", "prefix", "mean_column", "std_column", "cls_column", "tokens_column",
           "len_column", "long_tokens_column", "long_len_column", "token_ids_column", "tensor_field",
           "token_list_field", "length_field", "shape_of", "str_metadata", "provenance_of"]
