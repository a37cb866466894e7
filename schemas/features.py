"""The features table: one row per image `id`, columns written by each frozen encoder.

Column names, with `name` the encoder name with `-` → `_` (for latents, the name carries the resolution and
the bucketing when they are not 256 px center squares: `latents_name`):
    `{name}_mean` / `{name}_std`    VAE posterior                          fixed_size_list<halffloat>
    `{name}_cls`, `{name}_tokens`   image encoders: CLS, token set          fixed_size_list<halffloat>
    `{name}_ok`                     image encoders: the row's features are there   bool
    `{name}_bucket`                 bucketed latents: the row's aspect-ratio bin    int16
    `{name}_tokens` / `{name}_len`  text encoders: the valid tokens only    large_list<halffloat> (len × D), int32
    `{name}_long_tokens` / `{name}_long_len`   the same for the long caption

What a row can be trained on is known from the small columns alone (the trainer never reads a payload to
find out): `{name}_ok` is true where the image encoded, false where it did not (failed_to_decode); a length
is > 0 where tokens are stored, 0 where the encoder's output was not finite (nothing stored), null where the
row has no such caption. Every column is null in a fragment the encoder has not reached yet.
Fixed-size tensors are `fixed_size_list<halffloat>`, which `lance.torch` reads outside Ray; each field's
metadata holds its shape (-1: the length varies by row). Bucketed latents are `large_list<halffloat>` of
the row's bucket's shape, (C, -1, -1) in the field, the shapes by bucket in the provenance record. The table metadata holds one provenance record per
encoder. There is one row per image id; a row an encoder could not encode (an image that does not decode,
no caption) holds nulls in that encoder's columns.
"""

from __future__ import annotations

import json
import math

import pyarrow as pa

from lumos.schemas.images import ID

SHARD = "shard"  # in flight only: the images-table fragment a row came from, the unit of work and resume
ROW = "encoder_row"  # in flight only: the row's offset in that fragment (puts a fragment's rows back in order)
# in flight only: what a write task tells the driver about a part of a fragment it wrote
PART_ROWS, PART_PATH = "part_rows", "part_path"
FIELD_SHAPE = "lumos.shape"
# The token sets an image encoder stores besides its CLS vector (lumos-encode --tokens), and that an I2I run
# is conditioned on (lumos-train i2i --condition-tokens): see pipeline/encoders/vision.py.
TOKEN_SETS = ("cls", "patch", "all", "top119")
# Lance file format of the features table: 2.1 takes random rows ~1.3-1.6x faster than 2.0 (the trainer's
# shuffled reads), measured with bench/train_loader.py's rows on pylance 14.
STORAGE_VERSION = "2.1"
META_ENCODER = "lumos.encoder."  # + encoder name: its provenance record (JSON)
# Which images-table fragment each features fragment follows (JSON: images version, runs of
# [features fragment id, images fragment id, count] for consecutive ids); see pipeline/feature_layout.py.
META_LAYOUT = "lumos.layout"


# lumos-encode --buckets: how latents are cut. none: the center square at --resolution; pixart: each image to the
# nearest aspect-ratio bin of PixArt's table for --resolution (pipeline/encoders/aspect_buckets.py), per-row shapes.
BUCKETINGS = ("none", "pixart")
BASE_RESOLUTION = 256  # the paper's first stage: latents at this side keep the encoder's bare name


def latents_name(encoder: str, resolution: int, buckets: str = "none") -> str:
    """The name a latent encoder's features go by in a table (their columns' prefix, their provenance key):
    the encoder's name at 256 px center squares, else with the resolution and the bucketing, so that one
    table holds the same VAE at several: sd-vae, sd-vae-512, sd-vae-1024-pixart."""
    if resolution == BASE_RESOLUTION and buckets == "none":
        return encoder
    return f"{encoder}-{resolution}" + ("" if buckets == "none" else f"-{buckets}")


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


def bucket_column(encoder: str) -> str:
    """Bucketed latents: the row's aspect-ratio bin (an index into the provenance record's `bucket_shapes`)."""
    return f"{prefix(encoder)}_bucket"


def ok_column(encoder: str) -> str:
    """Image encoders: true where the row's features are stored (see the module doc)."""
    return f"{prefix(encoder)}_ok"


def len_column(encoder: str) -> str:
    return f"{prefix(encoder)}_len"


def long_tokens_column(encoder: str) -> str:
    return f"{prefix(encoder)}_long_tokens"


def long_len_column(encoder: str) -> str:
    return f"{prefix(encoder)}_long_len"


def pixels_column(encoder: str) -> str:
    """In flight only: an image encoder's preprocessed pixels, float32, flattened."""
    return f"encoder_pixels_{prefix(encoder)}"


def token_ids_column(encoder: str, caption_column: str) -> str:
    """In flight only: a caption's token ids for one text encoder, padded."""
    return f"encoder_ids_{prefix(encoder)}_{caption_column}"


def token_count_column(encoder: str, caption_column: str) -> str:
    """In flight only: how many of those ids are valid (null: no caption)."""
    return f"encoder_count_{prefix(encoder)}_{caption_column}"


def tensor_field(name: str, shape: tuple[int, ...]) -> pa.Field:
    return pa.field(name, pa.list_(pa.float16(), math.prod(shape)), metadata={FIELD_SHAPE: json.dumps(list(shape))})


def token_list_field(name: str, dim: int) -> pa.Field:
    """A variable number of `dim`-vectors a row, flattened: large_list<halffloat> of length n × dim. 64-bit
    offsets: 32-bit ones overflow past 2^31 values, ~4.4k T5-XXL captions of 120 tokens in one array."""
    return pa.field(name, pa.large_list(pa.float16()), metadata={FIELD_SHAPE: json.dumps([-1, dim])})


def varying_tensor_field(name: str, channels: int) -> pa.Field:
    """A tensor whose shape varies by row ((channels, h, w) of the row's bucket), flattened: large_list<halffloat>."""
    return pa.field(name, pa.large_list(pa.float16()), metadata={FIELD_SHAPE: json.dumps([channels, -1, -1])})


def bucket_field(name: str) -> pa.Field:
    return pa.field(name, pa.int16(), metadata={FIELD_SHAPE: json.dumps([])})


def ok_field(name: str) -> pa.Field:
    return pa.field(name, pa.bool_(), metadata={FIELD_SHAPE: json.dumps([])})


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


__all__ = ["BUCKETINGS", "latents_name", "bucket_column", "varying_tensor_field", "bucket_field", "ID", "SHARD", "ROW", "PART_ROWS", "PART_PATH", "META_LAYOUT", "prefix", "mean_column", "std_column", "cls_column", "tokens_column",
           "len_column", "ok_column", "ok_field", "long_tokens_column", "long_len_column", "token_ids_column", "token_count_column", "pixels_column", "tensor_field",
           "token_list_field", "length_field", "shape_of", "str_metadata", "provenance_of"]
