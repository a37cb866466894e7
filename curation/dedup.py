"""One key, one row, for SA-1B: the same image file name may sit in two folders of one tar, or in a copied
tar. Which copy stays is deterministic: the first in (tar path, offset in the tar) order, i.e. the first
tar in sorted path order, then the first member in tar order. Every other copy is dropped without being
decoded, as `duplicate_key` when its bytes equal the kept copy's and `duplicate_key_conflict` when they
differ (two different images under one name: which one the name means cannot be known).

How, without one entry per image in the driver (DESIGN.md 8):

    tars ─ TarMembers: CPU tasks read the tar headers only (no image bytes) → (key, archive, offset, size)
         ─ groupby(key).map_groups(verdicts_of_group): Ray Data shuffles the rows by key, so all copies
           of a key meet in one task; a key seen once costs nothing more, the copies of a repeated key
           are read (a seek into the uncompressed tar) and hashed
         → the losing copies (archive, offset, reason), left in the object store as Arrow blocks

The driver holds one object ref. Each read task fetches the verdicts (one row per losing copy, small
unless whole tars are copied) and keeps its own tar's; a loser is yielded with its reason, unread.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from lumos.curation.dumps import is_text, list_tar_members, sam_image_name
from lumos.schemas import dumps as names
from lumos.schemas import images as cols

@dataclass
class TarMembers:
    """CPU stage: one tar in, its image members out (headers only: the listing seeks over the data)."""

    def __call__(self, batch: pa.Table) -> pa.Table:
        rows = []
        for path in batch[names.ARCHIVE].to_pylist():
            members, _ = list_tar_members(path)  # a damaged tar: the members before the damage (read() says why)
            for member in members:
                key = sam_image_name(member)
                if key is not None:
                    rows.append({cols.KEY: key, names.ARCHIVE: path, names.OFFSET: member.offset_data,
                                 names.SIZE: member.size})
        return pa.Table.from_pylist(rows, schema=names.MEMBER_SCHEMA)


def _sha256(path: str, offset: int, size: int) -> str | None:
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
    except OSError:
        return None
    return hashlib.sha256(data).hexdigest() if len(data) == size else None


def verdicts_of_group(group: pa.Table) -> pa.Table:
    """All copies of one key in; the copies that lose to the first, with their reason, out."""
    if group.num_rows < 2:
        return names.VERDICT_SCHEMA.empty_table()
    group = group.sort_by([(names.ARCHIVE, "ascending"), (names.OFFSET, "ascending")])
    archives, offsets, sizes = (group[c].to_pylist() for c in (names.ARCHIVE, names.OFFSET, names.SIZE))
    kept = _sha256(archives[0], offsets[0], sizes[0])
    reasons = []
    for archive, offset, size in zip(archives[1:], offsets[1:], sizes[1:]):
        same = kept is not None and size == sizes[0] and _sha256(archive, offset, size) == kept
        reasons.append("duplicate_key" if same else "duplicate_key_conflict")
    return pa.table({names.ARCHIVE: archives[1:], names.OFFSET: offsets[1:], cols.DROP_REASON: reasons},
                    schema=names.VERDICT_SCHEMA)


def find_duplicates(tars: list[str]) -> list:
    """Object refs of Arrow tables (VERDICT_SCHEMA): every losing copy of a repeated key across `tars`."""
    import ray
    from ray.data.context import ShuffleStrategy

    tars = [t for t in tars if is_text(t)]  # a tar whose name is not UTF-8 is counted unreadable by read()
    if not tars:
        return []
    ds = ray.data.from_items([{names.ARCHIVE: t} for t in tars], override_num_blocks=len(tars))
    members = ds.map_batches(TarMembers(), batch_format="pyarrow", batch_size=1)
    # Ray's sort-based shuffle runs in plain tasks: its hash shuffle first starts a pool of aggregator actors,
    # seconds on every run, for rows this small (~100 bytes; 11M are ~1 GB) it buys nothing.
    members.context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    verdicts = members.groupby(cols.KEY).map_groups(verdicts_of_group, batch_format="pyarrow")
    return verdicts.repartition(1).to_arrow_refs()  # one block: each read task fetches one object


def losers_in(verdicts: list | None, archive: str) -> dict[int, str]:
    """Inside a read task: {data offset: reason} of the members of `archive` that lose to another copy."""
    if not verdicts:
        return {}
    import ray

    tables = [t for t in ray.get(verdicts) if t.num_rows]
    if not tables:
        return {}
    table = pa.concat_tables(tables)
    mine = table.filter(pc.equal(table[names.ARCHIVE], archive))
    return dict(zip(mine[names.OFFSET].to_pylist(), mine[cols.DROP_REASON].to_pylist()))

