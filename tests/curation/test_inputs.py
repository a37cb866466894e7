import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lumos.curation.inputs import read_schemas, resolve_parquet_files
from lumos.floor.errors import UserError


@pytest.fixture
def folder(tmp_path):
    for name, rows in (("a/one.parquet", 3), ("b/two.parquet", 2)):
        path = tmp_path / "meta" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"URL": ["u"] * rows, "WIDTH": [1] * rows, "HEIGHT": [1] * rows}), path)
    (tmp_path / "meta" / "README.txt").write_text("not metadata")
    return tmp_path / "meta"


def test_folder_glob_file_and_uri_resolve_to_the_same_files(folder, monkeypatch):
    expected = [str(folder / "a/one.parquet"), str(folder / "b/two.parquet")]
    assert resolve_parquet_files(str(folder)) == expected
    assert resolve_parquet_files(str(folder / "*/*.parquet")) == expected
    assert resolve_parquet_files(str(folder / "a/one.parquet")) == expected[:1]
    assert resolve_parquet_files(f"file://{folder}") == [f"file://{p}" for p in expected]
    monkeypatch.chdir(folder)
    assert resolve_parquet_files("a/one.parquet") == expected[:1]  # absolute, whatever the working folder


def test_schemas_and_rows_are_read_from_footers_local_or_uri(folder):
    schema, rows = read_schemas(resolve_parquet_files(f"file://{folder}"))
    assert rows == 5 and schema.names == ["URL", "WIDTH", "HEIGHT"]


def test_files_with_different_columns_are_refused(folder):
    pq.write_table(pa.table({"url": ["u"]}), folder / "a" / "odd.parquet")
    with pytest.raises(UserError, match=r"has columns .*, unlike .*odd.parquet|odd.parquet has columns url, unlike"):
        read_schemas(resolve_parquet_files(str(folder)))


def test_missing_uri_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_parquet_files(f"file://{tmp_path}/nothing-here")
    assert not os.path.exists(tmp_path / "nothing-here")


def _one(path, **columns):
    pq.write_table(pa.table(columns), path)
    return str(path)


def test_a_column_name_twice_in_one_file_is_refused(tmp_path):
    path = tmp_path / "dup.parquet"
    pq.write_table(pa.Table.from_arrays([pa.array(["u"]), pa.array([1]), pa.array([2])],
                                        names=["URL", "WIDTH", "WIDTH"]), path)
    with pytest.raises(UserError, match=r"dup.parquet: column WIDTH appears 2 times"):
        read_schemas([str(path)])


def test_column_types_are_checked_per_file_and_across_files(tmp_path):
    from lumos.curation.inputs import check_web_columns
    from lumos.schemas import web

    columns = web.detect("laion", ["URL", "TEXT", "WIDTH", "HEIGHT", "AESTHETIC_SCORE"])
    good = dict(URL=["u"], TEXT=pa.array([b"t"]), WIDTH=pa.array([1], pa.int32()), HEIGHT=[1.0],
                AESTHETIC_SCORE=pa.array([5], pa.int8()))
    a = _one(tmp_path / "a.parquet", **good)
    # binary captions, integer scores, an all-missing (null) column and dictionary text are all usable
    b = _one(tmp_path / "b.parquet", **{**good, "TEXT": pa.nulls(1)})
    check_web_columns([a, b], columns)
    check_web_columns([_one(tmp_path / "d.parquet", **{**good, "URL": pa.array(["u"]).dictionary_encode()})], columns)
    for column, value, message in [
        ("URL", pa.array([b"u"]), r"c.parquet: column URL \(url\) is binary; expected string"),
        ("HEIGHT", pa.array([True]), r"c.parquet: column HEIGHT \(height\) is bool; expected an integer or floating"),
        ("AESTHETIC_SCORE", pa.array([{"x": 1.0}]), r"column AESTHETIC_SCORE \(aesthetic\) is struct<x: double>"),
    ]:
        with pytest.raises(UserError, match=message):
            check_web_columns([_one(tmp_path / "c.parquet", **{**good, column: value})], columns)
    # same type in every file: int32 then int64 is refused, naming both files
    c = _one(tmp_path / "c.parquet", **{**good, "WIDTH": pa.array([1], pa.int64())})
    with pytest.raises(UserError, match=r"c.parquet: column WIDTH is int64, but it is int32 in .*a.parquet"):
        check_web_columns([a, b, c], columns)
