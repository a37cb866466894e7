import os

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lumos.curation.errors import UserError
from lumos.curation.inputs import read_schemas, resolve_parquet_files


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
