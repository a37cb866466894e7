"""Read an images table's stored images in Ray tasks, one Lance fragment (a shard) at a time."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from lumos.schemas import images as cols
from lumos.schemas.features import SHARD

ROWS_PER_BLOCK = 64


@dataclass
class ReadFragmentImages:
    """Ray stage: fragment ids in, blocks of (id, shard, image bytes) out."""

    uri: str

    def __call__(self, batch: pa.Table):
        import lance

        ds = lance.dataset(self.uri)
        for fragment_id in batch[SHARD].to_pylist():
            ids = ds.get_fragment(fragment_id).to_table(columns=[cols.ID], with_row_address=True)
            for start in range(0, ids.num_rows, ROWS_PER_BLOCK):
                part = ids.slice(start, ROWS_PER_BLOCK)
                blobs = ds.take_blobs(cols.IMAGE, addresses=part["_rowaddr"].to_pylist())
                yield pa.table({
                    cols.ID: part[cols.ID],
                    SHARD: pa.array([fragment_id] * part.num_rows, pa.int64()),
                    cols.IMAGE: pa.array([b.read() for b in blobs], pa.large_binary()),
                })


def fragment_dataset(uri: str, fragments: list[int]):
    """A Ray dataset of image rows of the given fragments, one read task per fragment."""
    import ray

    ds = ray.data.from_items([{SHARD: f} for f in fragments], override_num_blocks=max(len(fragments), 1))
    return ds.map_batches(ReadFragmentImages(uri), batch_format="pyarrow", batch_size=1)
