"""The fragment reader opens the table once per process, at the version the driver pinned."""

import lance
import pyarrow as pa

from lumos.floor.fragment_reader import ReadFragments, open_version
from lumos.schemas import images as cols
from lumos.schemas.features import SHARD


def _rows(start: int, n: int) -> pa.Table:
    ids = [f"id-{i}" for i in range(start, start + n)]
    return pa.table({
        cols.ID: ids, cols.SOURCE: ["test"] * n, cols.KEY: ids, cols.URL: [None] * n, cols.CAPTION: ids,
        cols.LONG_CAPTION: [None] * n, cols.CLASS_INDEX: [None] * n, cols.SYNSET: [None] * n,
        cols.AESTHETIC: [5.0] * n, cols.ORIGINAL_WIDTH: [1] * n, cols.ORIGINAL_HEIGHT: [1] * n,
        cols.WIDTH: [1] * n, cols.HEIGHT: [1] * n, cols.SHA256: ids,
        cols.IMAGE: [f"bytes-{i}".encode() for i in range(start, start + n)],
    }, schema=cols.IMAGES_SCHEMA)


def _read(reader: ReadFragments, fragment: int) -> pa.Table:
    return pa.concat_tables(list(reader(pa.table({SHARD: [fragment]}))))


def test_one_open_per_process_at_the_pinned_version(tmp_path):
    uri = str(tmp_path / "images.lance")
    lance.write_dataset(_rows(0, 6), uri, schema=cols.IMAGES_SCHEMA, max_rows_per_file=3)
    ds = lance.dataset(uri)
    version, fragments = ds.version, [f.fragment_id for f in ds.get_fragments()]
    assert len(fragments) == 2
    reader = ReadFragments(uri, version, [cols.IMAGE, cols.CAPTION])
    lance.write_dataset(_rows(6, 3), uri, schema=cols.IMAGES_SCHEMA, mode="append")  # appended meanwhile

    open_version.cache_clear()
    got = pa.concat_tables([_read(reader, f) for f in fragments])
    assert open_version.cache_info().misses == 1 and open_version.cache_info().hits == 1  # two tasks, one open
    assert got[cols.ID].to_pylist() == [f"id-{i}" for i in range(6)]  # the pinned version: no appended row
    assert got[cols.IMAGE].to_pylist() == [f"bytes-{i}".encode() for i in range(6)]
    assert got[cols.CAPTION].to_pylist() == got[cols.ID].to_pylist()
    assert got[SHARD].to_pylist() == [fragments[0]] * 3 + [fragments[1]] * 3
