"""Metadata of the wrong type is a user error before anything is written (one line naming the file, the
column and the type, exit 2); values that cannot be used are a counted reason on their row."""

import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_bad_input import _assert_one_line_error, _curate

from lumos.curation.web_job import WebJob, run_web_job
from lumos.schemas import web


def _laion(**overrides) -> pa.Table:
    columns = {"URL": pa.array(["http://127.0.0.1:9/a"]), "TEXT": pa.array(["a photo"]),
               "WIDTH": pa.array([800]), "HEIGHT": pa.array([600]), "AESTHETIC_SCORE": pa.array([6.0])}
    return pa.table({**columns, **overrides})


def _write(table: pa.Table, path) -> str:
    pq.write_table(table, path)
    return str(path)


def _duplicated_url(path):
    t = _laion()
    return _write(pa.Table.from_arrays([t["URL"], t["URL"], *t.columns[1:]], names=["URL", *t.column_names]),
                  path / "meta.parquet")


@pytest.mark.parametrize("make, fragments", [
    (lambda d: _write(_laion(WIDTH=pa.array(["800"])), d / "meta.parquet"),
     ["meta.parquet: column WIDTH (width) is string", "expected an integer or floating-point type"]),
    (lambda d: _write(_laion(TEXT=pa.array([7], pa.int64())), d / "meta.parquet"),
     ["meta.parquet: column TEXT (caption) is int64", "expected string"]),
    (_duplicated_url, ["meta.parquet: column URL appears 2 times"]),
    (lambda d: [_write(_laion(), d / "a.parquet"), _write(_laion(WIDTH=pa.array(["800"])), d / "b.parquet")][0],
     ["b.parquet: column WIDTH is string, but it is int64 in", "a.parquet"]),
], ids=["width_strings", "caption_int64", "duplicated_column", "type_differs_between_files"])
def test_wrong_metadata_types_fail_in_one_line_and_write_nothing(tmp_path, make, fragments):
    (tmp_path / "meta").mkdir()
    make(tmp_path / "meta")
    out = tmp_path / "out"
    code, lines = _curate("laion", "--input", str(tmp_path / "meta"), "--output", str(out))
    _assert_one_line_error(code, lines, *fragments)
    assert not out.exists()


def _strings(values: list[bytes | None]) -> pa.Array:
    """A `string` array holding exactly these bytes, valid UTF-8 or not (as a Parquet file from elsewhere can)."""
    offsets, data = [0], b""
    for v in values:
        data += v or b""
        offsets.append(len(data))
    validity = pa.array([v is not None for v in values]).buffers()[1]
    return pa.Array.from_buffers(pa.string(), len(values), [validity, pa.array(offsets, pa.int32()).buffers()[1],
                                                            pa.py_buffer(data)])


# name, width, height, caption (binary), aesthetic, expected reason (None: kept)
ROWS = [
    ("good", 800.0, 600.0, b"a photo", 6.0, None),
    ("good_utf8", 640.0, 640.0, "café ☕".encode(), 6.0, None),
    ("no_caption", 700.0, 700.0, None, 6.0, None),
    ("fraction_w", 800.5, 600.0, b"x", 6.0, "size_not_integer"),
    ("fraction_h", 800.0, 599.999, b"x", 6.0, "size_not_integer"),
    ("zero", 0.0, 600.0, b"x", 6.0, "size_missing"),
    ("negative", -1.0, 600.0, b"x", 6.0, "size_missing"),
    ("inf_size", math.inf, 600.0, b"x", 6.0, "size_missing"),
    ("huge", 1e12, 1e12, b"x", 6.0, "too_large"),
    ("bad_caption", 800.0, 600.0, b"\xff\xfe a caption", 6.0, "caption_not_utf8"),
    ("cut_caption", 800.0, 600.0, "é".encode()[:1], 6.0, "caption_not_utf8"),
    ("bad_caption_and_fraction", 800.5, 600.0, b"\xc3\x28", 6.0, "caption_not_utf8"),  # unusable text first
    ("inf_aesthetic", 800.0, 600.0, b"x", math.inf, "aesthetic_missing"),
    ("huge_aesthetic", 800.0, 600.0, b"x", 1e300, "aesthetic_missing"),  # no float32: stored as inf
    ("bad_url", 800.0, 600.0, b"x", 6.0, "url_not_utf8"),
]


def test_unusable_values_are_counted_on_their_rows(tmp_path, ray_session):
    meta = tmp_path / "meta"
    meta.mkdir()
    urls = [f"http://127.0.0.1:9/{r[0]}".encode() + (b"\xff" if r[0] == "bad_url" else b"") for r in ROWS]
    pq.write_table(pa.table({
        "URL": _strings(urls),
        "TEXT": pa.array([r[3] for r in ROWS], pa.binary()),
        "WIDTH": pa.array([r[1] for r in ROWS], pa.float64()),
        "HEIGHT": pa.array([r[2] for r in ROWS], pa.float64()),
        "AESTHETIC_SCORE": pa.array([r[4] for r in ROWS], pa.float64()),
    }), meta / "a.parquet")
    # a second file whose captions are all missing (type null, as pandas writes them): it fits the binary column
    pq.write_table(pa.table({
        "URL": ["http://127.0.0.1:9/second", "http://127.0.0.1:9/narrow"], "TEXT": pa.nulls(2),
        "WIDTH": [900.0, 511.0], "HEIGHT": [900.0, 900.0], "AESTHETIC_SCORE": [7.0, 7.0],
    }), meta / "b.parquet")

    stats = run_web_job(WebJob(source="laion", input=str(meta), output=str(tmp_path / "out"), download=False),
                        say=lambda *_: None)

    assert stats["rows"] == 17 and stats["kept"] == 4
    assert stats["dropped"] == {"size_not_integer": 2, "size_missing": 3, "too_large": 1, "caption_not_utf8": 3,
                                "aesthetic_missing": 2, "url_not_utf8": 1, "too_small": 1}
    kept = pq.read_table(tmp_path / "out" / "kept").sort_by(web.KEPT_URL).to_pylist()
    cols = web.KEPT_COLUMNS
    assert [(r[web.KEPT_URL].rsplit("/", 1)[1], r[cols[web.CAPTION]], r[cols[web.WIDTH]], r[cols[web.HEIGHT]])
            for r in kept] == [("good", "a photo", 800, 600), ("good_utf8", "café ☕", 640, 640),
                               ("no_caption", None, 700, 700), ("second", None, 900, 900)]
