"""Write a curation job's images table unit by unit, committed as the units finish.

A unit is what a job reads as one piece: a download shard, a tar, a chunk of files, an input fragment of a
mix. The job's units form a list that is the same on every run of the same job (`unit_keys`). Each
finished unit's kept rows become one fragment, written by a worker (`write_unit`: Lance `write_fragments`
inside a Ray task), so fragments are sized by the unit: 10k rows for a download shard, ~11k for an SA-1B
tar, i.e. 0.5-1 GB of 512-px JPEG, not Ray's block size.

The driver (`UnitTable`) commits finished units every `commit_every` seconds, and at the end, in ONE Lance
commit (a `Merge` of the fragment list) whose schema metadata (META_PROGRESS) carries the job's progress:
which units are done (a bitmap over the unit list), and the rows and drop reasons counted so far. The
fragments and the progress land together, so a job killed at any point and re-run does exactly the units
not committed: no row is written twice, and no committed unit is read again. Files of units in flight when
it was killed were never committed: the re-run's clean-up removes them.

What the driver holds: one bit a unit, the drop counts (one entry a reason), the listed rows (few by
nature: one per unreadable archive) and the fragment metadata of the units not yet committed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import zlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from lumos.floor.errors import UserError
from lumos.floor.lance_io import clean_versions, table_exists
from lumos.schemas.dumps import ERROR
from lumos.schemas.images import DROP_REASON, KEY, META_PROGRESS, META_TABLE_ID, new_table_id, table_id_of

COMMIT_EVERY_S = 60.0  # a commit costs time in proportion to the fragments already in the table (DESIGN.md 4)


@dataclass
class UnitResult:
    """What a worker hands back for one unit: its fragments' metadata (JSON) and its counts."""

    index: int
    fragments: list[str] = field(default_factory=list)
    rows: int = 0
    dropped: dict = field(default_factory=dict)
    listed: list = field(default_factory=list)  # {"path", "error"} of the rows dropped under a listed reason


@dataclass
class SinkResult:
    rows: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    listed: list = field(default_factory=list)


def write_unit(index: int, batches: Iterable[pa.Table], uri: str, schema: pa.Schema,
               listed: tuple[str, ...] = ()) -> UnitResult:
    """Inside a worker: rows of one unit (WORK_SCHEMA-like, with `drop_reason`: null keeps) → the kept rows
    as one fragment of the table at `uri` (written, not committed), the others counted. The rows stream
    through: the worker holds a batch at a time, not the unit."""
    from lance.fragment import write_fragments

    result = UnitResult(index)
    dropped = Counter()

    def kept_batches() -> Iterator[pa.RecordBatch]:
        for table in batches:
            result.rows += table.num_rows
            reasons = table[DROP_REASON]
            for item in pc.value_counts(reasons.drop_null()).to_pylist():
                dropped[item["values"]] += item["counts"]
            if listed:
                named = table.filter(pc.is_in(reasons, value_set=pa.array(listed, pa.string())))
                errors = named[ERROR].to_pylist() if ERROR in named.column_names else [None] * named.num_rows
                result.listed.extend({"path": k, "error": e} for k, e in zip(named[KEY].to_pylist(), errors))
            kept = table.filter(pc.is_null(reasons)).select(schema.names).cast(schema)
            yield from kept.to_batches()

    reader = pa.RecordBatchReader.from_batches(schema, kept_batches())
    # one fragment for the unit: no row cap below the unit's size (Lance still splits past its byte cap)
    fragments = write_fragments(reader, uri, schema=schema, max_rows_per_file=2**31 - 1)
    result.fragments = [json.dumps(f.to_json()) for f in fragments]
    result.dropped = dict(dropped)
    return result


def units_identity(unit_keys: list[str]) -> str:
    return hashlib.sha256("\n".join(unit_keys).encode()).hexdigest()[:32]


@dataclass
class Progress:
    """The job's progress, stored with the table (META_PROGRESS)."""

    units: int
    identity: str
    done: bytearray
    rows: int = 0
    dropped: Counter = field(default_factory=Counter)
    listed: list = field(default_factory=list)

    @classmethod
    def new(cls, unit_keys: list[str]) -> Progress:
        return cls(len(unit_keys), units_identity(unit_keys), bytearray((len(unit_keys) + 7) // 8))

    def is_done(self, index: int) -> bool:
        return bool(self.done[index >> 3] & (1 << (index & 7)))

    def mark(self, result: UnitResult) -> None:
        self.done[result.index >> 3] |= 1 << (result.index & 7)
        self.rows += result.rows
        self.dropped.update(result.dropped)
        self.listed.extend(result.listed)

    def to_json(self) -> str:
        return json.dumps({"units": self.units, "identity": self.identity,
                           "done": base64.b64encode(zlib.compress(bytes(self.done))).decode(),
                           "rows": self.rows, "dropped": dict(sorted(self.dropped.items())),
                           "listed": self.listed})

    @classmethod
    def from_json(cls, text: str) -> Progress:
        raw = json.loads(text)
        return cls(raw["units"], raw["identity"], bytearray(zlib.decompress(base64.b64decode(raw["done"]))),
                   raw["rows"], Counter(raw["dropped"]), raw["listed"])


def read_progress(uri: str) -> Progress | None:
    import lance

    if not table_exists(uri):
        return None
    raw = (lance.dataset(uri).schema.metadata or {}).get(META_PROGRESS.encode())
    return Progress.from_json(raw.decode()) if raw else None


class UnitTable:
    """The driver's side: which units are left, and the commits of the finished ones."""

    def __init__(self, uri: str, schema: pa.Schema, unit_keys: list[str], commit_every: float = COMMIT_EVERY_S,
                 on_commit=None):
        self.uri, self.schema, self.commit_every, self.on_commit = uri, schema, commit_every, on_commit
        self.progress = self._open(unit_keys)
        self.waiting: list[UnitResult] = []  # finished, not yet committed
        self.last_commit = time.monotonic()

    def _open(self, unit_keys: list[str]) -> Progress:
        import lance

        fresh = Progress.new(unit_keys)
        previous = read_progress(self.uri)
        if previous is not None:
            if previous.identity != fresh.identity:
                raise UserError(
                    f"{self.uri} was begun on other inputs ({previous.units} work units then, {fresh.units} now): "
                    f"the inputs changed since the interrupted run; delete it or choose another --output")
            clean_versions(self.uri, unverified=True)  # files of the units a killed run never committed
            return previous  # the table's metadata, its id included, is kept by every commit (`commit`)
        # a new table: its id is the schema's (images_schema makes one), or a new one
        schema = self.schema.with_metadata({**(self.schema.metadata or {}), META_PROGRESS.encode(): fresh.to_json(),
                                            META_TABLE_ID.encode(): table_id_of(self.schema) or new_table_id()})
        lance.write_dataset(schema.empty_table(), self.uri, schema=schema, mode="overwrite")
        return fresh

    def pending(self) -> list[int]:
        return [i for i in range(self.progress.units) if not self.progress.is_done(i)]

    def add(self, result: UnitResult) -> None:
        self.waiting.append(result)
        if time.monotonic() - self.last_commit >= self.commit_every:
            self.commit()

    def commit(self) -> None:
        """One commit of every finished unit: their fragments and the progress together."""
        import lance
        from lance.fragment import FragmentMetadata
        from lance.schema import LanceSchema

        if not self.waiting:
            return
        ds = lance.dataset(self.uri)
        fragments = [f.metadata for f in ds.get_fragments()]
        next_id = max((f.id for f in fragments), default=-1) + 1
        for result in self.waiting:
            for text in result.fragments:
                raw = json.loads(text)
                raw["id"] = next_id  # written apart, numbered here
                next_id += 1
                fragments.append(FragmentMetadata.from_json(json.dumps(raw)))
            self.progress.mark(result)
        # the stored metadata, not `self.schema`'s (built anew by this run): the table keeps its id
        schema = ds.schema.with_metadata({**ds.schema.metadata, META_PROGRESS.encode(): self.progress.to_json()})
        lance.LanceDataset.commit(self.uri, lance.LanceOperation.Merge(fragments, LanceSchema.from_pyarrow(schema)),
                                  read_version=ds.version)
        if self.on_commit:
            self.on_commit(len(self.waiting))
        self.waiting = []
        self.last_commit = time.monotonic()

    def finish(self) -> SinkResult:
        """Commit what is left, clean old versions; the job's counts over every run."""
        import lance

        self.commit()
        missing = len(self.pending())
        if missing:
            raise RuntimeError(f"{self.uri}: {missing} work units were not written")
        clean_versions(self.uri)
        p = self.progress
        listed = sorted(p.listed, key=lambda item: item["path"])  # units finish in any order
        return SinkResult(rows=p.rows, kept=lance.dataset(self.uri).count_rows(), dropped=Counter(p.dropped),
                          listed=listed)


def run_unit_tasks(table: UnitTable, submit, indices: Iterable[int], max_in_flight: int, on_done=None) -> None:
    """Run `submit(index)` (a Ray object ref of a UnitResult) for `indices`, at most `max_in_flight` at once;
    hand each result to `table` as it finishes. `indices` may be a generator that waits for units to become
    ready (downloads still running), yielding None now and then while it waits. A failing run still commits the units that finished."""
    running = []
    try:
        for index in indices:
            if index is not None:  # None: nothing new yet, a moment to collect
                running.append(submit(index))
            while len(running) >= max_in_flight:
                running = _collect(table, running, on_done, block=True)
            running = _collect(table, running, on_done, block=False)
        while running:
            running = _collect(table, running, on_done, block=True)
    except BaseException:
        table.commit()
        raise


def _collect(table: UnitTable, running: list, on_done, block: bool) -> list:
    import ray

    ready, running = ray.wait(running, num_returns=1, timeout=None if block else 0)
    for ref in ready:
        result = ray.get(ref)
        table.add(result)
        if on_done:
            on_done(result)
    return running
