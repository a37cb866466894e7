"""`lumos-encode`: run frozen encoders once over an images table, into feature columns of a Lance table.

    fragments of images.lance → read + decode + preprocess (CPU tasks) → encoder (actor pool, a GPU each
    when present) → rows appended to OUT/_staging/<encoder>.lance, one commit per finished shard
    → when every shard is in: the columns merged into OUT (created by the first encoder)

A shard is one fragment of the images table. A killed run loses only the shards in flight: a re-run skips
the shards already committed to the staging table, so no id is written twice. An encoder whose columns are
already in the features table with the same provenance is skipped; adding an encoder merges new columns
by `id`, without touching (or copying) the columns already there.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from PIL import Image

from lumos.curation.errors import UserError
from lumos.curation.job_dir import open_images_table, table_exists, write_json
from lumos.pipeline.encoders import get_encoder
from lumos.pipeline.image_reader import fragment_dataset
from lumos.pipeline.ray_runtime import init_ray
from lumos.schemas import features
from lumos.schemas import images as cols


@dataclass(frozen=True)
class EncoderConfig:
    name: str
    resolution: int = 256
    weights: str | None = None
    random_weights: bool = False  # tests of the real architectures only

    def build(self):
        return get_encoder(self.name, self.resolution, self.weights, self.random_weights)


@dataclass
class Preprocess:
    """CPU stage: stored image bytes → the encoder's input pixels (null where the image does not decode)."""

    config: EncoderConfig
    encoder: object = field(default=None, init=False, repr=False)

    def __call__(self, batch: pa.Table) -> pa.Table:
        self.encoder = self.encoder or self.config.build()
        arrays, size = [], None
        for data in batch[cols.IMAGE].to_pylist():
            try:
                with Image.open(io.BytesIO(data)) as im:
                    x = self.encoder.preprocess(im.convert("RGB"))
                size = x.size
                arrays.append(x.reshape(-1))
            except Exception:  # noqa: BLE001 - counted by the driver as failed_to_decode
                arrays.append(None)
        flat = [a if a is not None else np.zeros(size or 1, np.float32) for a in arrays]
        values = pa.array(np.concatenate(flat) if flat else np.zeros(0, np.float32))
        offsets = pa.array(np.concatenate([[0], np.cumsum([len(a) for a in flat])]).astype(np.int32))
        mask = pa.array([a is None for a in arrays])
        pixels = pa.ListArray.from_arrays(offsets, values, mask=mask)
        return batch.drop_columns([cols.IMAGE]).append_column(features.PIXELS, pixels)


@dataclass
class Encode:
    """Actor stage: the encoder is loaded once per actor; pixels in, fp16 feature columns out."""

    config: EncoderConfig
    device: str = "cpu"
    encoder: object = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.encoder = self.config.build().load(self.device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        if self.device == "cpu":  # the model is the bottleneck: every core of the node (see scoring.py)
            torch.set_num_threads(len(os.sched_getaffinity(0)))
        ok = pc.is_valid(batch[features.PIXELS]).to_numpy(zero_copy_only=False)
        out = pa.table({cols.ID: batch[cols.ID], features.SHARD: batch[features.SHARD]})
        side, results = self.encoder.input_size, {}
        if ok.any():
            flat = batch.filter(pa.array(ok))[features.PIXELS].combine_chunks().flatten().to_numpy()
            pixels = torch.from_numpy(flat.reshape(-1, 3, side, side).copy())  # Arrow buffers are read-only
            results = self.encoder.forward(pixels.to(self.device))
        for f in self.encoder.fields():
            values = np.zeros((batch.num_rows, f.type.list_size), np.float16)
            if ok.any():
                values[ok] = results[f.name]
            column = pa.FixedSizeListArray.from_arrays(pa.array(values.reshape(-1)), f.type.list_size,
                                                       mask=pa.array(~ok))
            out = out.append_column(f.name, column)
        return out


def run_encode(input_uri: str, output_uri: str, encoders: list[EncoderConfig], device: str = "auto",
               batch_size: int = 32, say=print) -> dict:
    """Encode every image of `input_uri` with each encoder not already in `output_uri`; returns stats."""
    images = open_images_table(input_uri, "--input")
    started, stats = time.monotonic(), {}
    for config in encoders:
        encoder = config.build()
        provenance = {**encoder.provenance(), "images": os.path.abspath(input_uri)}
        existing = _existing_provenance(output_uri, config.name)
        if existing is not None and _same(existing, provenance):
            say(f"{config.name}: already in {output_uri}, nothing to do")
            continue
        if existing is not None:
            differs = sorted(k for k in set(existing) | set(provenance)
                             if k not in UNCOMPARED and existing.get(k) != provenance.get(k))
            raise UserError(f"{output_uri} already holds {config.name} features made differently (differs in: "
                            f"{', '.join(differs)}); write to another --output")
        config.build().load("cpu")  # missing weights fail here, in one line, before any work starts
        init_ray()
        stats[config.name] = _encode_one(images, input_uri, output_uri, config, encoder, provenance, device,
                                         batch_size, say)
    if stats and "://" not in output_uri:
        stats_path = stats_file(output_uri)
        previous = {}
        if os.path.exists(stats_path):
            with open(stats_path) as f:
                previous = json.load(f)
        write_json(stats_path, {**previous, **stats})
    return {"encoders": stats, "total_s": round(time.monotonic() - started, 3)}


UNCOMPARED = ("versions",)  # a library upgrade alone does not make features different


def _same(a: dict, b: dict) -> bool:
    return {k: v for k, v in a.items() if k not in UNCOMPARED} == {k: v for k, v in b.items() if k not in UNCOMPARED}


def stats_file(output_uri: str) -> str:
    """The job's stats, beside the table: features.lance → features.stats.json."""
    base = output_uri.rstrip("/")
    return (base[: -len(".lance")] if base.endswith(".lance") else base) + ".stats.json"


def _existing_provenance(output_uri: str, name: str) -> dict | None:
    import lance

    if not table_exists(output_uri):
        return None
    return features.provenance_of(_str_meta(lance.dataset(output_uri).schema.metadata), name)


def _str_meta(meta) -> dict:
    return {k.decode() if isinstance(k, bytes) else k: v.decode() if isinstance(v, bytes) else v
            for k, v in (meta or {}).items()}


def _encode_one(images, input_uri, output_uri, config, encoder, provenance, device, batch_size, say) -> dict:
    import lance
    import ray
    from ray.data import ActorPoolStrategy

    staging = os.path.join(output_uri, "_staging", f"{features.prefix(config.name)}.lance")
    expected = {f.fragment_id: f.count_rows() for f in images.get_fragments()}
    done = set()
    if table_exists(staging):
        done = set(pc.unique(lance.dataset(staging).to_table(columns=[features.SHARD])[features.SHARD]).to_pylist())
    todo = [s for s in expected if s not in done]
    say(f"{config.name}: {sum(expected[s] for s in todo)} images in {len(todo)} shards to encode "
        f"({len(done)} shards already done)")
    gpus = int(ray.cluster_resources().get("GPU", 0))
    use_gpu = device == "cuda" or (device == "auto" and gpus > 0)
    schema = pa.schema([pa.field(cols.ID, pa.string()), pa.field(features.SHARD, pa.int64()), *encoder.fields()])
    failed, started, encoded = 0, time.monotonic(), 0
    if todo:
        ds = fragment_dataset(input_uri, todo)
        ds = ds.map_batches(Preprocess(config), batch_format="pyarrow", batch_size=batch_size)
        ds = ds.map_batches(Encode, fn_constructor_kwargs={"config": config, "device": "cuda" if use_gpu else "cpu"},
                            batch_format="pyarrow", batch_size=batch_size,
                            compute=ActorPoolStrategy(size=max(gpus, 1) if use_gpu else 1),
                            num_gpus=1 if use_gpu else 0)
        pending: dict[int, list[pa.Table]] = {}
        for batch in ds.iter_batches(batch_format="pyarrow", batch_size=None):
            for shard in pc.unique(batch[features.SHARD]).to_pylist():
                pending.setdefault(shard, []).append(batch.filter(pc.equal(batch[features.SHARD], shard)))
                if sum(t.num_rows for t in pending[shard]) == expected[shard]:
                    rows = pa.concat_tables(pending.pop(shard)).cast(schema)
                    good = rows.filter(pc.is_valid(rows[encoder.fields()[0].name]))
                    failed += rows.num_rows - good.num_rows
                    mode = "append" if table_exists(staging) else "create"
                    lance.write_dataset(good, staging, schema=schema, mode=mode)  # one commit: the shard is in
                    encoded += rows.num_rows
                    rate = encoded / max(time.monotonic() - started, 1e-9)
                    say(f"{config.name}: shard {shard} done, {encoded} images, {rate:.1f} images/s")
    _merge(staging, output_uri, encoder, provenance)
    return {"images": sum(expected.values()), "failed_to_decode": failed,
            "seconds": round(time.monotonic() - started, 3)}


def _merge(staging: str, output_uri: str, encoder, provenance: dict) -> None:
    """Move the staged columns into the features table, by id, and record the encoder's provenance."""
    import lance

    names = [f.name for f in encoder.fields()]
    staged = lance.dataset(staging).to_table(columns=[cols.ID, *names]) if table_exists(staging) else None
    if staged is None:
        staged = pa.Table.from_pylist([], schema=pa.schema([pa.field(cols.ID, pa.string()), *encoder.fields()]))
    if not table_exists(output_uri):
        ds = lance.write_dataset(staged.sort_by(cols.ID), output_uri)
    else:
        ds = lance.dataset(output_uri)
        if not set(names) <= set(ds.schema.names):  # already there: a run killed before its metadata commit
            missing = pc.invert(pc.is_in(staged[cols.ID], value_set=ds.to_table(columns=[cols.ID])[cols.ID]))
            if pc.any(missing).as_py():
                raise UserError(f"{output_uri} was made from other images than the table being encoded")
            ds.merge(staged, left_on=cols.ID)
            ds = lance.dataset(output_uri)
    ds.update_schema_metadata({features.META_ENCODER + encoder.name: json.dumps(provenance, sort_keys=True)})
    shutil.rmtree(staging, ignore_errors=True)
