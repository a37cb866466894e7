"""Read the rows of an images table in Ray tasks, one Lance fragment (a shard) at a time, only the columns
an encoder needs: the image blobs through Lance's blob API, other columns as a plain scan.

A worker process opens the table once (`open_version`): opening parses the whole manifest (~200 B a
fragment, 127 ms at 100k fragments), so with one task per fragment, re-opening it in every task would cost
each task time in proportion to the table. The version is pinned by the driver, so every task reads the
same table even if rows are appended meanwhile."""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import pyarrow as pa

from lumos.floor.stages import Placement, Stage, run_stage
from lumos.schemas import images as cols
from lumos.schemas.features import ROW, SHARD

ROWS_PER_BLOCK = 64


@functools.lru_cache(maxsize=4)
def open_version(uri: str, version: int):
    """The table at `version`, opened once per process (a Ray worker runs many read tasks)."""
    import lance

    return lance.dataset(uri, version=version)


@dataclass
class ReadFragments(Stage):
    """Ray stage: fragment ids in, blocks of (id, shard, row, *columns) out; `row` is the row's offset in its
    fragment, so that rows can be put back in fragment order after an unordered pipeline."""

    uri: str
    version: int
    columns: list[str] = field(default_factory=lambda: [cols.IMAGE])

    def placement(self) -> Placement:
        return Placement(batch_size=1)  # one fragment a call

    def __call__(self, batch: pa.Table):
        ds = open_version(self.uri, self.version)
        plain = [c for c in self.columns if c != cols.IMAGE]
        for fragment_id in batch[SHARD].to_pylist():
            rows = ds.get_fragment(fragment_id).to_table(columns=[cols.ID, *plain], with_row_address=True)
            for start in range(0, rows.num_rows, ROWS_PER_BLOCK):
                part = rows.slice(start, ROWS_PER_BLOCK)
                out = {cols.ID: part[cols.ID], SHARD: pa.array([fragment_id] * part.num_rows, pa.int64()),
                       ROW: pa.array(range(start, start + part.num_rows), pa.int32())}
                for name in self.columns:
                    if name == cols.IMAGE:
                        blobs = ds.take_blobs(cols.IMAGE, addresses=part["_rowaddr"].to_pylist())
                        out[name] = pa.array([b.read() for b in blobs], pa.large_binary())
                    else:
                        out[name] = part[name]
                yield pa.table(out)


def fragment_dataset(uri: str, version: int, fragments: list[int], columns: list[str] | None = None):
    """A Ray dataset of the rows of the given fragments of the table at `version` (id, shard, row, `columns`),
    one read task per fragment."""
    import ray

    ds = ray.data.from_items([{SHARD: f} for f in fragments], override_num_blocks=max(len(fragments), 1))
    return run_stage(ds, ReadFragments(uri, version, columns or [cols.IMAGE]))
