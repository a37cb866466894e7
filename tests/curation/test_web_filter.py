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


def test_tallies_and_duplicates_are_counted_and_the_choice_ignores_block_order(tmp_path, ray_session):
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


def _metadata(rows: int, urls: int, seed: int) -> list[dict]:
    """LAION-shaped rows drawing from `urls` URLs (so many repeats), with tied and missing scores."""
    import random

    rng = random.Random(seed)
    scores = [None, float("nan"), 5.0, 5.5, 6.0, 6.5]
    return [{"URL": f"http://img.example/{rng.randrange(urls)}.jpg",
             "TEXT": rng.choice([None, "", "a cat", "a cat ", "a dog", "ü"]),
             "WIDTH": rng.choice([100, 600, 800]), "HEIGHT": rng.choice([600, 800]),
             "AESTHETIC_SCORE": rng.choice(scores), "pwatermark": rng.choice([None, float("nan"), 0.1, 0.2]),
             "punsafe": rng.choice([None, 0.0, 0.3])} for _ in range(rows)]


def _write_metadata(rows: list[dict], folder, files: int) -> list[str]:
    schema = pa.schema([("URL", pa.string()), ("TEXT", pa.string()), ("WIDTH", pa.int64()), ("HEIGHT", pa.int64()),
                        ("AESTHETIC_SCORE", pa.float32()), ("pwatermark", pa.float32()), ("punsafe", pa.float32())])
    folder.mkdir()
    paths, per_file = [], -(-len(rows) // files)
    for i in range(files):
        paths.append(str(folder / f"meta-{i:03d}.parquet"))
        pq.write_table(pa.Table.from_pylist(rows[i * per_file:(i + 1) * per_file], schema=schema), paths[-1],
                       row_group_size=1000)
    return paths


def _preference(row: dict) -> tuple:
    """The documented order, in plain Python: highest score (None/NaN as -inf), then url, caption, width, height,
    watermark, unsafe ascending (NaN after the numbers, None last), then the score itself (NaN before None)."""
    import math

    def value(v):
        if v is None:
            return (2, 0)
        return (1, 0) if isinstance(v, float) and math.isnan(v) else (0, v)

    score = row[web.KEPT_COLUMNS[web.AESTHETIC]]
    rank = math.inf if score is None or math.isnan(score) else -score
    fields = [web.KEPT_URL, *(web.KEPT_COLUMNS[f] for f in (web.CAPTION, web.WIDTH, web.HEIGHT, web.WATERMARK,
                                                            web.UNSAFE, web.AESTHETIC))]
    return (rank, *(value(row[f]) for f in fields))


def _comparable(rows: list[dict]) -> list[dict]:
    import math

    return [{k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in r.items()} for r in rows]


def test_duplicate_urls_at_scale_keep_the_preferred_row_in_id_order_whatever_the_split(tmp_path, ray_session,
                                                                                       monkeypatch):
    from lumos.curation import key_buckets, web_filter
    from lumos.schemas.images import make_id

    monkeypatch.setattr(web_filter, "KEPT_FILE_ROWS", 700)
    rows = _metadata(20_000, 9_000, seed=1)
    columns = web.detect("laion", list(rows[0]))
    config = WebFilterConfig("laion", 512, None, None, None)

    # the reference: the rows that pass, then per URL the first in the documented order
    passed = [{web.KEPT_URL: r["URL"], web.KEPT_ID: make_id("laion", r["URL"]),
               **{web.KEPT_COLUMNS[f]: r[p] for f, p in ((web.CAPTION, "TEXT"), (web.WIDTH, "WIDTH"),
                                                          (web.HEIGHT, "HEIGHT"), (web.AESTHETIC, "AESTHETIC_SCORE"),
                                                          (web.WATERMARK, "pwatermark"), (web.UNSAFE, "punsafe"))}}
              for r in rows if min(r["WIDTH"], r["HEIGHT"]) >= 512]
    passed = pa.Table.from_pylist(passed, schema=web.KEPT_SCHEMA).to_pylist()  # scores as float32 values
    best: dict[str, dict] = {}
    for r in passed:
        if r[web.KEPT_ID] not in best or _preference(r) < _preference(best[r[web.KEPT_ID]]):
            best[r[web.KEPT_ID]] = r
    expected = [best[i] for i in sorted(best)]
    assert len(passed) - len(expected) > 3_000  # many repeats, across files

    outputs = []
    # a: 256 buckets (2 hex digits) of ~27 unique rows, many to a kept file, in batches of 16 rows; b: 16 buckets
    # of ~430, one to three to a kept file, in batches of 64; and the input split and ordered otherwise
    for name, files, order, bucket_rows, batch_rows in (("a", 3, rows, 500, 16), ("b", 8, rows[::-1], 10**5, 64)):
        monkeypatch.setattr(key_buckets, "BUCKET_ROWS", bucket_rows)
        monkeypatch.setattr(web_filter, "UNIQUE_BATCH", batch_rows)
        paths = _write_metadata(order, tmp_path / f"in-{name}", files)
        kept_dir = tmp_path / f"kept-{name}"
        result = web_filter.run_filter(paths, columns, config, str(tmp_path / f"work-{name}"), str(kept_dir))
        assert result.rows == 20_000 and result.kept == len(expected)
        assert dict(result.dropped) == {"too_small": 20_000 - len(passed),
                                        "duplicate_url": len(passed) - len(expected)}
        kept_files = sorted(kept_dir.iterdir())
        sizes = [pq.read_metadata(p).num_rows for p in kept_files]
        full, rest = divmod(len(expected), 700)
        assert sizes == [700] * full + [rest] * (rest > 0)  # one list, cut in order
        kept = pa.concat_tables(pq.read_table(p) for p in kept_files)
        assert kept.schema == web.KEPT_SCHEMA
        ids = kept[web.KEPT_ID].to_pylist()
        assert len(set(ids)) == len(ids) and ids == sorted(ids)
        assert _comparable(kept.to_pylist()) == _comparable(expected)
        outputs.append([(p.name, p.read_bytes()) for p in kept_files])
    assert outputs[0] == outputs[1]  # the same files, byte for byte, whatever the split and the buckets
