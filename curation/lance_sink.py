"""A Ray Data sink that writes the rows a job keeps to a new Lance table and counts the ones it drops.

Rows arrive with a `drop_reason` column: null means keep. Each write task writes its kept rows as Lance
fragments and returns them with its counts; the driver commits every fragment in one Lance commit. Ray only
hands the driver the returns of write tasks that succeeded, so a retried task is neither written nor
counted twice, and a killed job leaves no table behind (only orphan files, which the next run clears).

Rows dropped under a `listed` reason (few by nature: one per unreadable archive) also come back by name,
with their `error` column, so that the job's stats can say which files they were.
"""

from __future__ import annotations

import shutil
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
from ray.data.datasource.datasink import Datasink

from lumos.schemas.dumps import ERROR
from lumos.schemas.images import DROP_REASON, KEY


@dataclass
class SinkResult:
    rows: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    listed: list = field(default_factory=list)  # {"path", "error"} of the rows dropped under a listed reason


class CountedLanceSink(Datasink):
    def __init__(self, uri: str, schema: pa.Schema, listed: tuple[str, ...] = ()):
        self.uri = uri
        self.schema = schema
        self.listed = listed
        self.result: SinkResult | None = None

    def on_write_start(self, schema=None) -> None:
        shutil.rmtree(self.uri, ignore_errors=True)  # leftovers of a killed run: nothing was committed

    def write(self, blocks, ctx) -> tuple[list, Counter, int, list]:
        from lance.fragment import write_fragments

        fragments, dropped, rows, listed = [], Counter(), 0, []
        for block in blocks:
            table = block if isinstance(block, pa.Table) else pa.Table.from_pandas(block)
            rows += table.num_rows
            reasons = table[DROP_REASON]
            for item in pc.value_counts(reasons.drop_null()).to_pylist():
                dropped[item["values"]] += item["counts"]
            if self.listed:
                named = table.filter(pc.is_in(reasons, value_set=pa.array(self.listed, pa.string())))
                errors = named[ERROR].to_pylist() if ERROR in named.column_names else [None] * named.num_rows
                listed.extend({"path": k, "error": e} for k, e in zip(named[KEY].to_pylist(), errors))
            kept = table.filter(pc.is_null(reasons)).select(self.schema.names).cast(self.schema)
            if kept.num_rows:
                fragments.extend(write_fragments(kept, self.uri, schema=self.schema))
        return fragments, dropped, rows, listed

    def on_write_complete(self, write_result) -> None:
        import lance

        fragments, result = [], SinkResult()
        for frags, dropped, rows, listed in write_result.write_returns:
            fragments.extend(frags)
            result.dropped.update(dropped)
            result.rows += rows
            result.listed.extend(listed)
        result.listed.sort(key=lambda item: item["path"])  # write tasks finish in any order
        if fragments:
            ds = lance.LanceDataset.commit(self.uri, lance.LanceOperation.Overwrite(self.schema, fragments))
        else:
            ds = lance.write_dataset(self.schema.empty_table(), self.uri, schema=self.schema)
        result.kept = ds.count_rows()
        self.result = result

    def get_name(self) -> str:
        return "CountedLance"


def write_counted(ds, uri: str, schema: pa.Schema, listed: tuple[str, ...] = ()) -> SinkResult:
    """Run Ray dataset `ds` into a new table at `uri` (an empty table when `ds` is None)."""
    from ray.data.datasource.datasink import WriteResult

    sink = CountedLanceSink(uri, schema, listed)
    if ds is None:
        sink.on_write_start()
        sink.on_write_complete(WriteResult(num_rows=0, size_bytes=0, write_returns=[]))
    else:
        ds.write_datasink(sink)
    return sink.result
