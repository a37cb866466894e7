"""`lumos-encode`: run frozen encoders once over an images table, into feature columns of a Lance table.

    fragments of images.lance → read + decode/tokenize (CPU tasks) → encoder (actor pool, GPUs when present)
    → data files of OUT/_staging/<encoder>.lance written by tasks; the driver commits a shard's files in
    one commit once all its rows are written → when every shard is in: the columns merged into OUT

A shard is one fragment of the images table. A killed run loses only the shards in flight: a re-run skips
the shards already committed to the staging table, so no id is written twice. An encoder whose columns are
already in the features table with the same provenance is skipped; adding an encoder merges new columns
by `id`, without touching (or copying) the columns already there.

The run holds OUT/.lumos.lock throughout (floor/output_lock.py): a second run on the same output fails at
once, and the next holder clears what a killed run left uncommitted. An images table that repeats an id is
refused (see check_unique_ids).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from lumos.floor.errors import UserError
from lumos.floor.fragment_reader import fragment_dataset
from lumos.floor.lance_io import open_images_table, table_exists, write_json
from lumos.floor.output_lock import output_lock
from lumos.floor.ray_runtime import describe_cluster, init_ray
from lumos.pipeline.encoders import EncoderConfig
from lumos.schemas import features
from lumos.schemas import images as cols


_BUILT: dict[EncoderConfig, object] = {}  # per worker process: a task stage is unpickled afresh for each task


def _built(config: EncoderConfig):
    """The encoder object (its tokenizer, once loaded, included) for CPU stages, once per worker process."""
    if config not in _BUILT:
        _BUILT[config] = config.build()
    return _BUILT[config]


@dataclass
class Prepare:
    """CPU stage: decode and resize images, or tokenize captions (null where a row cannot be prepared)."""

    config: EncoderConfig

    def __call__(self, batch: pa.Table) -> pa.Table:
        return _built(self.config).prepare(batch)


@dataclass
class Encode:
    """Actor stage: the encoder is loaded once per actor; prepared rows in, fp16 feature columns out."""

    config: EncoderConfig
    device: str = "cpu"
    encoder: object = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.encoder = self.config.build().load(self.device)

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        if self.device == "cpu":  # the model is the bottleneck: every core of the node (see scoring.py)
            torch.set_num_threads(len(os.sched_getaffinity(0)))
        return self.encoder.encode(batch)


@dataclass(frozen=True)
class Placement:
    """Where the encoder actors run."""

    device: str = "auto"  # auto: GPUs when the Ray cluster has them | cuda | cpu
    batch_size: int = 32
    gpus_per_actor: float = 1.0  # < 1 packs several actors on one GPU (small encoders)


def run_encode(input_uri: str, output_uri: str, encoders: list[EncoderConfig], device: str = "auto",
               batch_size: int = 32, gpus_per_actor: float = 1.0, say=print, progress: bool = False) -> dict:
    """Encode every row of `input_uri` with each encoder not already in `output_uri`; returns stats."""
    placement = Placement(device, batch_size, gpus_per_actor)
    images = open_images_table(input_uri, "--input")
    started, stats = time.monotonic(), {}
    with output_lock(output_uri, "lumos-encode"):  # one writer, from the first check of the output to the end
        todo = []
        for config in encoders:
            encoder = config.build()
            provenance = {**encoder.provenance(), "images": os.path.abspath(input_uri)}
            existing = _existing_provenance(output_uri, config.name)
            if (existing is not None and _same(existing, provenance)) or any(c.name == config.name for c, *_ in todo):
                say(f"{config.name}: already in {output_uri}, nothing to do")
                continue
            if existing is not None:
                differs = sorted(k for k in set(existing) | set(provenance)
                                 if k not in UNCOMPARED and existing.get(k) != provenance.get(k))
                raise UserError(f"{output_uri} already holds {config.name} features made differently (differs in: "
                                f"{', '.join(differs)}); write to another --output")
            encoder.check()  # missing weights fail here, in one line, before any work starts
            todo.append((config, encoder, provenance))
        if todo:
            init_ray()
            say(describe_cluster())
            check_unique_ids(images, input_uri)
        for config, encoder, provenance in todo:
            stats[config.name] = _encode_one(images, input_uri, output_uri, config, encoder, provenance, placement,
                                             say, progress)
        if stats and "://" not in output_uri:
            stats_path = stats_file(output_uri)
            previous = {}
            if os.path.exists(stats_path):
                with open(stats_path) as f:
                    previous = json.load(f)
            write_json(stats_path, {**previous, **stats})
    return {"encoders": stats, "total_s": round(time.monotonic() - started, 3)}


IDS_PER_PARTITION = 2_000_000  # ids per aggregator of the repeated-id check's groupby


def check_unique_ids(images, uri: str) -> None:
    """UserError when the images table repeats an id: two images would share the features of one. Tables that
    lumos-curate makes now carry the unique-ids marker and are trusted; an older one is checked with a
    distributed groupby on its id column alone (the driver gets one small row per block, never the ids)."""
    import math

    from lance_ray import read_lance

    if cols.has_unique_ids(images.schema):
        return
    partitions = min(max(math.ceil(images.count_rows() / IDS_PER_PARTITION), 1), 200)
    counts = read_lance(uri, columns=[cols.ID]).groupby(cols.ID, num_partitions=partitions).count()
    found = counts.map_batches(_repeated_ids, batch_format="pyarrow", batch_size=None).take_all()
    repeated = sum(r["ids"] for r in found)
    if repeated:
        example = next(r for r in found if r["ids"])
        raise UserError(f"images table {uri} has {repeated} repeated ids (e.g. {example['example']}, "
                        f"{example['rows']} rows): it was made before lumos-curate kept one row per key; re-curate "
                        f"it with this version, then encode the new table")


def _repeated_ids(counts: pa.Table) -> pa.Table:
    """Per block of (id, count()): how many ids occur more than once, and one of them with its row count."""
    repeated = counts.filter(pc.greater(counts[counts.column_names[-1]], 1))
    first = repeated.slice(0, 1).to_pylist()
    return pa.table({"ids": [repeated.num_rows], "example": [first[0][cols.ID] if first else None],
                     "rows": [first[0][counts.column_names[-1]] if first else None]})


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
    return features.provenance_of(features.str_metadata(lance.dataset(output_uri).schema.metadata), name)


def _encode_one(images, input_uri, output_uri, config, encoder, provenance, placement: Placement, say,
                progress: bool) -> dict:
    import lance
    import ray
    from ray.data import ActorPoolStrategy
    from tqdm import tqdm

    staging = os.path.join(output_uri, "_staging", f"{features.prefix(config.name)}.lance")
    _clear_staging_leftovers(staging)
    expected = {f.fragment_id: n for f in images.get_fragments() if (n := f.count_rows())}  # empty: nothing to do
    done = set()
    if table_exists(staging):
        done = set(pc.unique(lance.dataset(staging).to_table(columns=[features.SHARD])[features.SHARD]).to_pylist())
    todo = [s for s in expected if s not in done]
    total = sum(expected[s] for s in todo)
    say(f"{config.name}: {total} rows in {len(todo)} shards to encode ({len(done)} shards already done)")
    gpus = ray.cluster_resources().get("GPU", 0)
    use_gpu = placement.device == "cuda" or (placement.device == "auto" and gpus > 0)
    actors = max(int(gpus // placement.gpus_per_actor), 1) if use_gpu else 1
    tallies = staging[: -len(".lance")] + ".tally"  # per shard: rows without features, per reason
    os.makedirs(tallies, exist_ok=True)
    started = time.monotonic()
    if todo:
        if progress:  # ours counts rows out of the whole pipeline; Ray's per-operator bars would interleave
            ray.data.DataContext.get_current().enable_progress_bars = False
        ds = fragment_dataset(input_uri, images.version, todo, encoder.inputs())
        ds = ds.map_batches(Prepare(config), batch_format="pyarrow", batch_size=placement.batch_size)
        ds = ds.map_batches(Encode, fn_constructor_kwargs={"config": config, "device": "cuda" if use_gpu else "cpu"},
                            batch_format="pyarrow", batch_size=placement.batch_size,
                            compute=ActorPoolStrategy(size=actors),
                            num_gpus=placement.gpus_per_actor if use_gpu else 0)
        ds = ds.map_batches(WriteStaged(staging, config), batch_format="pyarrow", batch_size=None)
        written: dict[int, list] = {}  # shard → [rows, fragments, tally] of its parts written so far
        with tqdm(total=total, unit="row", desc=config.name, disable=not progress, dynamic_ncols=True) as bar:
            for part in ds.iter_rows():  # small rows: the feature bytes never pass through this process
                bar.update(part[features.STAGED_ROWS])
                shard = part[features.SHARD]
                rows, fragments, tally = written.setdefault(shard, [0, [], {}])
                written[shard][0] = rows + part[features.STAGED_ROWS]
                fragments.extend(json.loads(part[features.STAGED_FRAGMENTS]))
                for reason, n in json.loads(part[features.STAGED_TALLY]).items():
                    tally[reason] = tally.get(reason, 0) + n
                if written[shard][0] == expected[shard]:
                    write_json(os.path.join(tallies, f"{shard}.json"), tally)  # before the commit
                    _commit_shard(staging, fragments, encoder)  # one commit: the shard is in
                    del written[shard]
    counts: dict[str, int] = {}
    for shard in expected:  # every shard, those of a killed earlier run included
        with open(os.path.join(tallies, f"{shard}.json")) as f:
            for reason, n in json.load(f).items():
                counts[reason] = counts.get(reason, 0) + n
    _merge(staging, output_uri, encoder, provenance)
    shutil.rmtree(tallies, ignore_errors=True)
    for reason, n in counts.items():
        if n:
            say(f"{config.name}: {n} rows without features: {reason}")
    return {"rows": sum(expected.values()), "encoded_now": total, **counts,
            "seconds": round(time.monotonic() - started, 3)}


def _clear_staging_leftovers(staging: str) -> None:
    """Remove the data files a killed run wrote but never committed: we hold the output's lock, so no other run
    is writing here and every file that no version of the staging table refers to is a leftover."""
    import datetime

    import lance

    if "://" in staging or not os.path.isdir(staging):
        return
    if not table_exists(staging):  # killed before its first commit: nothing in it counts
        shutil.rmtree(staging)
        return
    lance.dataset(staging).cleanup_old_versions(older_than=datetime.timedelta(0), delete_unverified=True)


@dataclass
class WriteStaged:
    """Write stage: encoded rows → data files of the staging table, not yet committed, one set per shard in
    the batch; out: one small row per shard part (rows, fragments as JSON, rows without features)."""

    uri: str
    config: EncoderConfig

    def __call__(self, batch: pa.Table) -> pa.Table:
        from lance.fragment import write_fragments

        encoder = _built(self.config)
        schema = staging_schema(encoder)
        out = []
        for shard in pc.unique(batch[features.SHARD]).to_pylist():
            rows = batch.filter(pc.equal(batch[features.SHARD], shard)).select(schema.names).cast(schema)
            fragments = write_fragments(rows, self.uri, schema=schema)
            out.append({features.SHARD: shard, features.STAGED_ROWS: rows.num_rows,
                        features.STAGED_FRAGMENTS: json.dumps([f.to_json() for f in fragments]),
                        features.STAGED_TALLY: json.dumps(encoder.tally(rows))})
        return pa.Table.from_pylist(out)


def staging_schema(encoder) -> pa.Schema:
    return pa.schema([pa.field(cols.ID, pa.string()), pa.field(features.SHARD, pa.int64()), *encoder.fields()])


def _commit_shard(staging: str, fragments: list[dict], encoder) -> None:
    import lance
    from lance.fragment import FragmentMetadata

    metadata = [FragmentMetadata.from_json(json.dumps(f)) for f in fragments]
    if table_exists(staging):
        lance.LanceDataset.commit(staging, lance.LanceOperation.Append(metadata),
                                  read_version=lance.dataset(staging).version)
    else:
        lance.LanceDataset.commit(staging, lance.LanceOperation.Overwrite(staging_schema(encoder), metadata))


def _merge(staging: str, output_uri: str, encoder, provenance: dict) -> None:
    """Move the staged columns into the features table, by id, and record the encoder's provenance."""
    import lance

    names = [f.name for f in encoder.fields()]
    staged = lance.dataset(staging).to_table(columns=[cols.ID, *names]) if table_exists(staging) else None
    if staged is None:
        staged = pa.Table.from_pylist([], schema=pa.schema([pa.field(cols.ID, pa.string()), *encoder.fields()]))
    if not table_exists(output_uri):
        ds = lance.write_dataset(staged.sort_by(cols.ID), output_uri, data_storage_version=features.STORAGE_VERSION)
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
