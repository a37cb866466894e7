"""`lumos-encode`: run frozen encoders once over an images table, into feature columns of a Lance table.

The features table follows the images table fragment for fragment (pipeline/feature_layout.py). One command
is one pass over the fragments some of its encoders have not reached, with every encoder of the command at
once (pipeline/encode_stages.py): each image is read and decoded once, each encoder has its own actor pool,
and each fragment gets one new data file, written by a worker. The driver only grafts those files onto the
fragments' metadata, in one commit every `commit_every` seconds and at the end, so a killed run loses the
work since its last commit and a re-run skips every fragment already committed. Adding an encoder later
writes its columns only: no existing data file is read back, rewritten or copied. When the images table has
grown, a re-run encodes the new fragments only.

The run holds OUT/.lumos.lock throughout (floor/output_lock.py): a second run on the same output fails at
once. An images table that repeats an id is refused (see check_unique_ids).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from lumos.floor import fs, stages
from lumos.floor.errors import UserError
from lumos.floor.fragment_reader import fragment_dataset
from lumos.floor.lance_io import clean_versions, open_images_table, table_exists
from lumos.floor.output_lock import output_lock
from lumos.floor.ray_runtime import describe_cluster, init_ray
from lumos.pipeline import feature_layout as layout
from lumos.floor.column_writer import WriteParts, write_columns
from lumos.pipeline.encode_stages import Encode, Prepare, pass_schema
from lumos.pipeline.encoders import EncoderConfig
from lumos.schemas import features
from lumos.schemas import images as cols

COMMIT_EVERY = 300.0  # seconds between commits of finished fragments: what a killed run can lose


@dataclass(frozen=True)
class Placement:
    """Where the encoder actors run."""

    device: str = "auto"  # auto: GPUs when the Ray cluster has them | cuda | cpu
    batch_size: int = 32
    gpus_per_actor: float = 1.0  # < 1 packs several actors on one GPU (small encoders)


def run_encode(input_uri: str, output_uri: str, encoders: list[EncoderConfig], device: str = "auto",
               batch_size: int = 32, gpus_per_actor: float = 1.0, say=print, progress: bool = False,
               commit_every: float = COMMIT_EVERY) -> dict:
    """Encode every row of `input_uri` with each encoder, where the features table lacks it; returns stats."""
    placement = Placement(device, batch_size, gpus_per_actor)
    images = open_images_table(input_uri, "--input")
    started = time.monotonic()
    with output_lock(output_uri, "lumos-encode"):  # one writer, from the first check of the output to the end
        chosen, seen = [], set()
        for config in encoders:
            if config.stored_name in seen:
                continue
            seen.add(config.stored_name)
            encoder = config.build()
            provenance = {**encoder.provenance(), "images": _images_provenance(images, input_uri)}
            existing = _existing_provenance(output_uri, config.stored_name)
            if existing is not None and not _same(existing, provenance):
                then, now = _compared(existing), _compared(provenance)
                differs = sorted(k for k in set(then) | set(now) if then.get(k) != now.get(k))
                said = "; ".join(f"{k}: {then.get(k)!r} then, {now.get(k)!r} now" for k in differs)
                raise UserError(f"{output_uri} already holds {config.stored_name} features made differently ({said}); "
                                "write to another --output")
            encoder.check()  # missing weights fail here, in one line, before any work starts
            chosen.append((config, encoder, provenance))
        if _nothing_to_do(images, output_uri, [e for _, e, _ in chosen]):
            for config, *_ in chosen:
                say(f"{config.stored_name}: already in {output_uri}, nothing to do")
            return {"encoders": {}, "total_s": round(time.monotonic() - started, 3)}
        init_ray()
        if device == "cuda":
            stages.require_gpus("--device cuda")
        say(describe_cluster())
        check_unique_ids(images, input_uri)
        if table_exists(output_uri):
            layout.tag_reading_version(output_uri)
            clean_versions(output_uri, unverified=True)  # what a killed run wrote and never committed
        staging = fs.join(output_uri, "_staging")
        fs.remove_tree(staging)
        ds, followed = layout.follow_images(images, input_uri, output_uri, say)
        metadata = {features.META_ENCODER + c.stored_name: _json(p) for c, _, p in chosen}
        ds = layout.add_fields(output_uri, [f for _, e, _ in chosen for f in e.fields()], metadata)
        todo: dict[frozenset, list[int]] = {}  # encoders missing → fragments: one pass per distinct set
        missing = {c.stored_name: set(layout.missing_fragments(ds, _done_column(e))) for c, e, _ in chosen}
        for fragment in (f.fragment_id for f in ds.get_fragments()):
            names = frozenset(n for n, frags in missing.items() if fragment in frags)
            if names:
                todo.setdefault(names, []).append(fragment)
        rows = {f.fragment_id: f.metadata.physical_rows for f in ds.get_fragments()}
        encoded: dict[str, int] = {}  # encoder → rows it encoded in this run
        for names, fragments in sorted(todo.items(), key=lambda kv: sorted(kv[0])):
            configs = [c for c, _, _ in chosen if c.stored_name in names]
            rows_now = _encode_pass(input_uri, images.version, output_uri, configs, fragments, followed, rows,
                                    staging, placement, say, progress, commit_every)
            for name in names:
                encoded[name] = encoded.get(name, 0) + rows_now
        ran = [e for c, e, _ in chosen if any(c.stored_name in names for names in todo)]
        for config, *_ in chosen:
            if config.stored_name not in {e.name for e in ran}:
                say(f"{config.stored_name}: already in {output_uri}, nothing to do")
        fs.remove_tree(staging)
        clean_versions(output_uri)
        stats = _stats(output_uri, ran, encoded, time.monotonic() - started, say)
        previous = fs.read_json(stats_file(output_uri)) if fs.exists(stats_file(output_uri)) else {}
        fs.write_json(stats_file(output_uri), {**previous, **stats})
    return {"encoders": stats, "total_s": round(time.monotonic() - started, 3)}


def _nothing_to_do(images, output_uri: str, encoders) -> bool:
    """Every non-empty images fragment is followed and every encoder has reached every fragment (fragment
    metadata only): a finished run re-run starts nothing and writes nothing."""
    import lance

    if not table_exists(output_uri):
        return False
    ds = lance.dataset(output_uri)
    current = layout.read_layout(ds)
    if current is None:
        return False
    followed = set(layout.decode_runs(current["runs"]).values())
    if any(layout.fragment_rows(f) and f.fragment_id not in followed for f in images.get_fragments()):
        return False
    return all(_done_column(e) in ds.schema.names and not layout.missing_fragments(ds, _done_column(e))
               for e in encoders)


def _json(obj) -> str:
    import json

    return json.dumps(obj, sort_keys=True)


def _images_path(uri: str) -> str:
    return uri if "://" in uri else os.path.abspath(uri)


def _images_provenance(images, uri: str) -> dict:
    """The images table the features come from: its id (schemas/images.py META_TABLE_ID), which a copy or a
    move of the table keeps, with its path and version at this run as a record only (not compared: a moved
    table is the same table, and one that grew is followed). A table made before tables had an id is named
    by its path."""
    table_id = cols.table_id_of(images.schema)
    return {**({"table_id": table_id} if table_id else {}), "path": _images_path(uri), "version": images.version}


def _images_identity(images) -> dict:
    """What names the images table in a comparison: its id, else its path (a table without an id, or features
    made when provenance named the table by its path alone)."""
    if isinstance(images, dict):
        return {"table_id": images["table_id"]} if images.get("table_id") else {"path": images.get("path")}
    return {"path": images}


def _done_column(encoder) -> str:
    """The column whose data file in a fragment says the encoder has been there: its first validity column."""
    validity = [f.name for f in encoder.fields() if pa.types.is_boolean(f.type) or pa.types.is_int32(f.type)]
    return validity[0]


def _stats(output_uri: str, encoders, encoded: dict[str, int], seconds: float, say) -> dict:
    """Per encoder: rows, rows encoded by this run, and rows without features per reason, counted by Lance
    from the small validity columns (never the payload)."""
    import lance

    ds = lance.dataset(output_uri)
    total, out = ds.count_rows(), {}
    for encoder in encoders:
        counts: dict[str, int] = {}
        for reason, where in encoder.tally():
            counts[reason] = counts.get(reason, 0) + ds.count_rows(filter=where)
        for reason, n in counts.items():
            if n:
                say(f"{encoder.name}: {n} rows without features: {reason}")
        out[encoder.name] = {"rows": total, "encoded_now": encoded.get(encoder.name, 0), **counts,
                             "seconds": round(seconds, 3)}
    return out


def _gpu_split(placement: Placement, gpus: float, encoders: int) -> tuple[bool, int, float]:
    """(use GPUs, actors per encoder, GPUs per actor): the cluster's GPUs split evenly between the encoders of
    one pass, each with its own pool (1 GPU, 2 encoders: one actor each on half the GPU)."""
    use_gpu = placement.device == "cuda" or (placement.device == "auto" and gpus > 0)
    if not use_gpu:
        return False, 1, 0.0
    share = max(gpus, 1) / encoders
    return True, max(int(share // placement.gpus_per_actor), 1), min(placement.gpus_per_actor, share)


def _encode_pass(input_uri, images_version, output_uri, configs, fragments, followed, rows, staging,
                 placement: Placement, say, progress: bool, commit_every: float) -> int:
    """Encode `fragments` of the features table with `configs`; returns the rows encoded."""
    import lance
    import ray
    from tqdm import tqdm

    names = ", ".join(c.stored_name for c in configs)
    total = sum(rows[f] for f in fragments)
    say(f"{names}: {total} rows in {len(fragments)} fragments to encode")
    version = lance.dataset(output_uri).version  # the workers' view: every data file is written against it
    target = {followed[f]: f for f in fragments}  # images fragment → features fragment (O(fragments))
    expected = {followed[f]: rows[f] for f in fragments}
    use_gpu, actors, gpus = _gpu_split(placement, ray.cluster_resources().get("GPU", 0), len(configs))
    if progress:  # ours counts rows out of the whole pipeline; Ray's per-operator bars would interleave
        ray.data.DataContext.get_current().enable_progress_bars = False
    inputs = sorted({c for config in configs for c in config.build().inputs()})
    ds = fragment_dataset(input_uri, images_version, list(target), inputs)
    ds = stages.run_stage(ds, Prepare(configs, placement.batch_size))
    for config in configs:
        # On CPU, one encoder's actor reserves a core (the decode tasks then leave it that core); several
        # reserve none: their cores, or half of one each, could leave a node unable to run a read task.
        pool = stages.Placement(batch_size=placement.batch_size, actors=actors, num_gpus=gpus if use_gpu else 0,
                      num_cpus=1 if use_gpu or len(configs) == 1 else 0)
        ds = stages.run_stage(ds, Encode(config, "cuda" if use_gpu else "cpu"), pool)
    schema = pass_schema(configs)
    ds = stages.run_stage(ds, WriteParts(staging, schema))
    with tqdm(total=total, unit="row", desc=names, disable=not progress, dynamic_ncols=True) as bar:
        write_columns(ds.iter_rows(), output_uri, version, expected, target, schema, commit_every,
                      on_rows=bar.update)
    return total


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


def _compared(provenance: dict) -> dict:
    """The part of a provenance record that must match: all but UNCOMPARED, the images table by its identity."""
    out = {k: v for k, v in provenance.items() if k not in UNCOMPARED}
    if "images" in out:
        out["images"] = _images_identity(out["images"])
    return out


def _same(a: dict, b: dict) -> bool:
    return _compared(a) == _compared(b)


def stats_file(output_uri: str) -> str:
    """The job's stats, beside the table: features.lance → features.stats.json."""
    base = output_uri.rstrip("/")
    return (base[: -len(".lance")] if base.endswith(".lance") else base) + ".stats.json"


def _existing_provenance(output_uri: str, name: str) -> dict | None:
    import lance

    if not table_exists(output_uri):
        return None
    return features.provenance_of(features.str_metadata(lance.dataset(output_uri).schema.metadata), name)
