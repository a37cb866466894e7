"""Read the rows of an images table in Ray tasks, one Lance fragment (a shard) at a time, only the columns
an encoder needs: the image blobs through Lance's blob API, other columns as a plain scan."""

from __future__ import annotations

from dataclasses import dataclass, field

import pyarrow as pa

from lumos.schemas import images as cols
from lumos.schemas.features import SHARD

ROWS_PER_BLOCK = 64


@dataclass
class ReadFragments:
    """Ray stage: fragment ids in, blocks of (id, shard, *columns) out."""

    uri: str
    columns: list[str] = field(default_factory=lambda: [cols.IMAGE])

    def __call__(self, batch: pa.Table):
        import lance

        ds = lance.dataset(self.uri)
        plain = [c for c in self.columns if c != cols.IMAGE]
        for fragment_id in batch[SHARD].to_pylist():
            rows = ds.get_fragment(fragment_id).to_table(columns=[cols.ID, *plain], with_row_address=True)
            for start in range(0, rows.num_rows, ROWS_PER_BLOCK):
                part = rows.slice(start, ROWS_PER_BLOCK)
                out = {cols.ID: part[cols.ID], SHARD: pa.array([fragment_id] * part.num_rows, pa.int64())}
                for name in self.columns:
                    if name == cols.IMAGE:
                        blobs = ds.take_blobs(cols.IMAGE, addresses=part["_rowaddr"].to_pylist())
                        out[name] = pa.array([b.read() for b in blobs], pa.large_binary())
                    else:
                        out[name] = part[name]
                yield pa.table(out)


def fragment_dataset(uri: str, fragments: list[int], columns: list[str] | None = None):
    """A Ray dataset of the rows of the given fragments (id, shard, `columns`), one read task per fragment."""
    import ray

    ds = ray.data.from_items([{SHARD: f} for f in fragments], override_num_blocks=max(len(fragments), 1))
    return ds.map_batches(ReadFragments(uri, columns or [cols.IMAGE]), batch_format="pyarrow", batch_size=1)
