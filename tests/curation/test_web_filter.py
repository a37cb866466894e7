import pyarrow as pa
import pyarrow.parquet as pq

from lumos.curation.web_filter import FilterBatch, WebFilterConfig, write_kept
from lumos.schemas import web


def _blocks(tmp_path):
    columns = web.detect("laion", ["URL", "TEXT", "WIDTH", "HEIGHT", "AESTHETIC_SCORE"])
    stage = FilterBatch(columns, WebFilterConfig("laion", 512, 5.0, None, None))
    a = pa.table({"URL": ["u1", "u2", "u3"], "TEXT": ["first", "x", "y"], "WIDTH": [600, 600, 100],
                  "HEIGHT": [600, 600, 100], "AESTHETIC_SCORE": pa.array([6.0, 7.0, 9.0], pa.float32())})
    b = pa.table({"URL": ["u1", "u1", "u4"], "TEXT": ["better", "also", "z"], "WIDTH": [600, 600, 600],
                  "HEIGHT": [600, 600, 600], "AESTHETIC_SCORE": pa.array([6.5, 6.5, 4.0], pa.float32())})
    paths = []
    for name, table in (("a", a), ("b", b)):
        paths.append(str(tmp_path / f"{name}.parquet"))
        pq.write_table(stage(table), paths[-1])
    return paths


def test_tallies_and_duplicates_are_counted_and_the_choice_ignores_block_order(tmp_path):
    paths = _blocks(tmp_path)
    results = []
    for order, folder in ((paths, "k1"), (paths[::-1], "k2")):
        result = write_kept(order, str(tmp_path / folder))
        kept = pa.concat_tables(pq.read_table(p) for p in sorted((tmp_path / folder).glob("*.parquet")))
        results.append((result, sorted(kept.to_pylist(), key=lambda r: r[web.KEPT_ID])))
    (result, kept), (result2, kept2) = results
    assert kept == kept2
    assert (result.rows, result.kept, dict(result.dropped)) == (result2.rows, result2.kept, dict(result2.dropped))
    assert result.rows == 6 and result.kept == 2
    assert dict(result.dropped) == {"too_small": 1, "aesthetic_too_low": 1, "duplicate_url": 2}
    # of three rows for u1, the highest score wins; of the two at 6.5, a fixed field order decides
    assert {r[web.KEPT_URL]: r[web.KEPT_COLUMNS[web.CAPTION]] for r in kept} == {"u1": "also", "u2": "x"}
