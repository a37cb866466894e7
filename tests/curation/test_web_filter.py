import pyarrow as pa
import pyarrow.parquet as pq

from lumos.curation.web_filter import FilterBatch, WebFilterConfig, write_kept
from lumos.schemas import web


def _blocks(tmp_path):
    columns = web.detect("laion", ["URL", "TEXT", "WIDTH", "HEIGHT", "AESTHETIC_SCORE"])
    stage = FilterBatch(columns, WebFilterConfig("laion", 512, 5.0, None, None))
    a = pa.table({"URL": ["http://x/u1", "http://x/u2", "http://x/u3"], "TEXT": ["first", "x", "y"],
                  "WIDTH": [600, 600, 100],
                  "HEIGHT": [600, 600, 100], "AESTHETIC_SCORE": pa.array([6.0, 7.0, 9.0], pa.float32())})
    b = pa.table({"URL": ["http://x/u1", "http://x/u1", "http://x/u4"], "TEXT": ["better", "also", "z"],
                  "WIDTH": [600, 600, 600],
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
    assert {r[web.KEPT_URL]: r[web.KEPT_COLUMNS[web.CAPTION]] for r in kept} == {"http://x/u1": "also",
                                                                                 "http://x/u2": "x"}


def test_normalise_gives_the_filter_utf8_text_and_float32_scores_and_names_unusable_text():
    import pyarrow.compute as pc

    from lumos.curation.web_filter import normalise

    columns = web.detect("coyo", ["url", "text", "width", "height", "aesthetic_score_laion_v2"])
    batch = pa.table({"url": ["http://x/1", "http://x/2", "http://x/3"],
                      "text": pa.array([b"fine", b"\xff", None], pa.binary()),
                      "width": pa.array([800, 800, 800], pa.uint16()), "height": [600.0, 600.0, 600.0],
                      "aesthetic_score_laion_v2": pa.array([6, 7, 8], pa.int64()).dictionary_encode()})
    table, reasons = normalise(batch, columns)
    assert table.column_names == list(web.LOGICAL_FIELDS)
    assert table[web.CAPTION].type == pa.string() and table[web.CAPTION].to_pylist() == ["fine", None, None]
    assert table[web.AESTHETIC].type == pa.float32() and table[web.AESTHETIC].to_pylist() == [6.0, 7.0, 8.0]
    assert table[web.WATERMARK].to_pylist() == [None] * 3  # coyo's file lacks it here: all NULL
    assert reasons.to_pylist() == [None, "caption_not_utf8", None]
    out = FilterBatch(columns, WebFilterConfig("coyo", 512, 5.0, None, None))(batch)
    kept = out.filter(pc.is_null(out[web.DROP_REASON]))
    assert kept[web.KEPT_COLUMNS[web.WIDTH]].to_pylist() == [800, 800] and kept.schema == web.FILTERED_SCHEMA
    assert out.filter(pc.is_valid(out[web.DROP_REASON])).select([web.DROP_REASON, web.DROP_COUNT]) \
        .to_pylist() == [{web.DROP_REASON: "caption_not_utf8", web.DROP_COUNT: 1}]
