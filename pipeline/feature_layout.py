"""The features table follows the images table fragment for fragment.

Each non-empty fragment of the images table has one fragment in the features table, with the same rows in the
same order: first just their `id` (written by Ray tasks, committed once), then one data file more per encoder
pass, holding that pass's columns for the fragment's rows. An encoder's columns are added to the schema
first as all-null columns (metadata only, nothing written); a pass writes a data file for each fragment in a
worker and the driver grafts it onto the fragment's metadata (floor/column_writer.py: a Lance `Merge` commit
of fragment metadata, never of rows). No existing data file is rewritten or copied.

What is done is read from the table itself: an encoder has reached a fragment when one of the fragment's
data files holds the encoder's validity column (`{name}_ok`, or its caption length). The table metadata
records which images fragment each features fragment follows (`lumos.layout`: runs of consecutive ids, so
one entry for a table whose fragments were never rewritten). All of it is O(fragments), never O(rows).

Housekeeping: every commit makes a Lance version. Before a run writes anything, the table's latest version
is tagged `lumos-before-encode` (a trainer started before the run may be reading it), and at the start and
end of the run every other version is cleaned up, with the files a killed run wrote and never committed.
"""

from __future__ import annotations

from dataclasses import dataclass

import json

import pyarrow as pa

from lumos.floor.column_writer import fragment_rows
from lumos.floor.errors import UserError
from lumos.floor.lance_io import keep_version, table_exists
from lumos.floor.stages import Placement, Stage, run_stage
from lumos.schemas import features
from lumos.schemas import images as cols

READING_TAG = "lumos-before-encode"
ID_SCHEMA = pa.schema([pa.field(cols.ID, pa.string())])


def encode_runs(pairs: list[tuple[int, int]]) -> list[list[int]]:
    """[(features fragment, images fragment), ...] in table order → runs [features first, images first, count]."""
    runs: list[list[int]] = []
    for f, i in pairs:
        if runs and runs[-1][0] + runs[-1][2] == f and runs[-1][1] + runs[-1][2] == i:
            runs[-1][2] += 1
        else:
            runs.append([f, i, 1])
    return runs


def decode_runs(runs: list[list[int]]) -> dict[int, int]:
    """runs → {features fragment: images fragment}."""
    return {f + k: i + k for f, i, n in runs for k in range(n)}


def read_layout(ds) -> dict | None:
    raw = features.str_metadata(ds.schema.metadata).get(features.META_LAYOUT)
    return json.loads(raw) if raw else None


@dataclass
class WriteIds(Stage):
    """Ray stage: images fragment ids in → the features fragment of their ids written (not committed) out."""

    images_uri: str
    images_version: int
    output_uri: str

    def placement(self) -> Placement:
        return Placement(batch_size=16)

    def __call__(self, batch: pa.Table) -> pa.Table:
        from lance.fragment import write_fragments

        from lumos.floor.fragment_reader import open_version

        images = open_version(self.images_uri, self.images_version)
        out = []
        for shard in batch[features.SHARD].to_pylist():
            ids = images.get_fragment(shard).to_table(columns=[cols.ID])
            written = write_fragments(ids, self.output_uri, schema=ID_SCHEMA, max_rows_per_file=ids.num_rows + 1,
                                      data_storage_version=features.STORAGE_VERSION)
            if len(written) != 1:
                raise RuntimeError(f"images fragment {shard}: {len(written)} id fragments written, expected 1")
            out.append({features.SHARD: shard, "fragment": json.dumps(written[0].to_json())})
        return pa.Table.from_pylist(out, schema=pa.schema([(features.SHARD, pa.int64()), ("fragment", pa.string())]))


def follow_images(images, images_uri: str, output_uri: str, say=print):
    """Make the features table at `output_uri` have a fragment for every non-empty fragment of `images` (the
    images table, opened at the version being encoded): create it, or append fragments for images fragments
    added since. Returns (features dataset, {features fragment: images fragment})."""
    import lance
    import ray
    from lance.fragment import FragmentMetadata

    live = {f.fragment_id: fragment_rows(f) for f in images.get_fragments()}
    exists = table_exists(output_uri)
    ds = lance.dataset(output_uri) if exists else None
    layout = read_layout(ds) if exists else {"runs": []}
    if layout is None:
        raise UserError(f"{output_uri} was written by an older lumos-encode (its fragments do not follow the images "
                        "table); write to a new --output")
    followed = decode_runs(layout["runs"])
    if exists:
        _check_followed(ds, followed, live, images_uri, output_uri)
    new = [i for i, n in live.items() if n and i not in set(followed.values())]
    if not new and not exists:  # an images table with no rows: an empty features table
        ds = lance.LanceDataset.commit(output_uri, lance.LanceOperation.Overwrite(ID_SCHEMA, []))
        ds.update_schema_metadata({features.META_LAYOUT: json.dumps({"images_version": images.version,
                                                                     "runs": []})})
        return lance.dataset(output_uri), followed
    if not new:
        return ds, followed
    say(f"features table: {len(new)} new fragments follow the images table's ({sum(live[i] for i in new)} rows)")
    items = ray.data.from_items([{features.SHARD: i} for i in new], override_num_blocks=min(len(new), 200))
    written = run_stage(items, WriteIds(images_uri, images.version, output_uri)).take_all()  # a row a fragment
    order = {i: k for k, i in enumerate(new)}
    written.sort(key=lambda r: order[r[features.SHARD]])
    metadata = [FragmentMetadata.from_json(r["fragment"]) for r in written]
    if exists:
        ds = lance.LanceDataset.commit(output_uri, lance.LanceOperation.Append(metadata), read_version=ds.version)
    else:
        ds = lance.LanceDataset.commit(output_uri, lance.LanceOperation.Overwrite(ID_SCHEMA, metadata))
    fragments = ds.get_fragments()[-len(new):]  # appended in the order given
    for f, r in zip(fragments, written):
        if f.metadata.physical_rows != live[r[features.SHARD]]:
            raise RuntimeError(f"features fragment {f.fragment_id} does not follow images fragment {r[features.SHARD]}")
        followed[f.fragment_id] = r[features.SHARD]
    pairs = sorted(followed.items())
    ds.update_schema_metadata({features.META_LAYOUT: json.dumps({"images_version": images.version,
                                                                 "runs": encode_runs(pairs)})})
    return lance.dataset(output_uri), followed


def _check_followed(ds, followed: dict[int, int], live: dict[int, int], images_uri: str, output_uri: str) -> None:
    """Every features fragment still has its images fragment, with as many rows (fragment metadata only)."""
    for f in ds.get_fragments():
        image_fragment = followed.get(f.fragment_id)
        if image_fragment is None:
            raise UserError(f"{output_uri}: fragment {f.fragment_id} follows no images fragment (was the features "
                            "table compacted?); write to a new --output")
        if live.get(image_fragment) != f.metadata.physical_rows:
            raise UserError(f"{images_uri}: fragment {image_fragment} was removed or rewritten since {output_uri} was "
                            "made from it (compacted, rows deleted?); write to a new --output")


def field_id(ds, name: str) -> int:
    return ds.lance_schema.field(name).id()


def missing_fragments(ds, column: str) -> list[int]:
    """Fragments with no data file for `column` (an encoder's validity column): not encoded yet."""
    wanted = field_id(ds, column)
    return [f.fragment_id for f in ds.get_fragments()
            if not any(wanted in d.fields for d in f.metadata.files)]


def add_fields(output_uri: str, fields: list[pa.Field], metadata: dict[str, str]):
    """Add the columns not yet in the schema as all-null (metadata only) and record `metadata`."""
    import lance

    ds = lance.dataset(output_uri)
    new = [f for f in fields if f.name not in ds.schema.names]
    if new:
        ds.add_columns(new)
        ds = lance.dataset(output_uri)
    ds.update_schema_metadata(metadata)
    return lance.dataset(output_uri)


def tag_reading_version(output_uri: str) -> None:
    """Tag the latest version: the one a trainer started before this run may be reading (kept by cleanup)."""
    keep_version(output_uri, READING_TAG)
