"""lumos.floor.fs on a local directory and on an S3 bucket (moto on 127.0.0.1), and Lance and Ray workers on
that bucket configured by the environment alone (no storage_options anywhere)."""

import datetime
import logging
import os
import threading
import uuid

import lance
import pyarrow as pa
import pytest
from lance.fragment import write_fragments

from lumos.floor import fs


@pytest.fixture(params=["local", "s3"])
def root(request, tmp_path, s3_bucket):
    """An empty directory: under tmp_path, or a fresh prefix of the test bucket."""
    if request.param == "local":
        return str(tmp_path / "root")
    return fs.join(s3_bucket.uri, uuid.uuid4().hex)


def test_join_keeps_the_form_of_its_base():
    assert fs.join("s3://b", "x", "y.json") == "s3://b/x/y.json"
    assert fs.join("s3://b/out.lance/", "/_staging/", "3") == "s3://b/out.lance/_staging/3"
    assert fs.join("/data/out", "_staging", "3") == os.path.join("/data/out", "_staging", "3")
    assert fs.join("file:///data/out", "a") == "file:///data/out/a"


def test_files_round_trip(root):
    stats, part = fs.join(root, "stats.json"), fs.join(root, "_staging", "7", "a.arrow")
    assert not fs.exists(root) and not fs.exists(stats)
    assert fs.list_files(root) == []

    fs.write_json(stats, {"b": 1, "a": [1, 2]})
    fs.write_bytes(part, b"\x00\x01part")
    assert fs.read_json(stats) == {"a": [1, 2], "b": 1}
    assert fs.read_bytes(stats) == b'{\n  "a": [\n    1,\n    2\n  ],\n  "b": 1\n}'  # indented, keys sorted
    assert fs.read_bytes(part) == b"\x00\x01part"
    assert fs.exists(root) and fs.exists(stats) and fs.exists(fs.join(root, "_staging"))
    assert fs.list_files(root) == sorted([stats, part])  # nothing else: no temporary file left behind

    fs.write_json(stats, {"c": 3})  # replaced whole
    assert fs.read_json(stats) == {"c": 3}

    fs.remove(part)
    assert not fs.exists(part)
    with pytest.raises(FileNotFoundError):
        fs.remove(part)
    fs.remove(part, missing_ok=True)
    with pytest.raises(FileNotFoundError):
        fs.read_bytes(part)

    fs.write_bytes(fs.join(root, "_staging", "8", "b.arrow"), b"b")
    fs.remove_tree(fs.join(root, "_staging"))
    assert fs.list_files(root) == [stats]
    fs.remove_tree(fs.join(root, "_staging"))  # absent: no error
    fs.remove_tree(root)
    assert fs.list_files(root) == [] and not fs.exists(stats)


def test_a_small_file_is_one_put_on_s3(s3_bucket, caplog):
    uri = fs.join(s3_bucket.uri, uuid.uuid4().hex, "stats.json")
    with caplog.at_level(logging.INFO, logger="werkzeug"):  # moto's server logs each request it answers
        fs.write_json(uri, {"rows": 1})
    key = uri.split("/", 3)[3]
    requests = [r.getMessage() for r in caplog.records if r.name == "werkzeug" and key in r.getMessage()]
    assert len(requests) == 1 and f'"PUT /lumos-test/{key} HTTP/1.1" 200' in requests[0], requests
    assert fs.read_json(uri) == {"rows": 1}


def _table(start: int, n: int) -> pa.Table:
    return pa.table({"id": [f"id-{i}" for i in range(start, start + n)], "x": pa.array(range(start, start + n))})


def test_lance_on_s3_with_the_environment_only(s3_bucket):
    """What lumos-encode does to a features table: write, append fragments written apart then committed
    (concurrently too), add columns, schema metadata, a tag, and cleanup of old versions."""
    uri = fs.join(s3_bucket.uri, uuid.uuid4().hex, "t.lance")
    lance.write_dataset(_table(0, 10), uri, max_rows_per_file=5)
    ds = lance.dataset(uri)
    assert ds.to_table().equals(_table(0, 10)) and len(ds.get_fragments()) == 2

    pending = [write_fragments(_table(10 + 3 * k, 3), uri, schema=ds.schema) for k in range(4)]
    assert lance.dataset(uri).count_rows() == 10  # written, not committed
    lance.LanceDataset.commit(uri, lance.LanceOperation.Append(pending[0]), read_version=ds.version)
    errors = []

    def commit(fragments):
        try:
            lance.LanceDataset.commit(uri, lance.LanceOperation.Append(fragments), read_version=ds.version)
        except Exception as err:  # noqa: BLE001 - reported by the assert below
            errors.append(err)

    threads = [threading.Thread(target=commit, args=(f,)) for f in pending[1:]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    ds = lance.dataset(uri)
    assert ds.version == ds.versions()[-1]["version"] == 5  # no commit overwrote another's manifest
    assert sorted(ds.to_table()["id"].to_pylist()) == sorted(f"id-{i}" for i in range(22))

    ds.add_columns([pa.field("y", pa.float32())])
    ds = lance.dataset(uri)
    ds.update_schema_metadata({"lumos": "yes"})
    ds.tags.create("reading", ds.version)
    ds = lance.dataset(uri)
    assert ds.schema.field("y").type == pa.float32() and ds.schema.metadata[b"lumos"] == b"yes"
    assert ds.tags.list()["reading"]["version"] == ds.version

    removed = ds.cleanup_old_versions(older_than=datetime.timedelta(0), error_if_tagged_old_versions=False)
    assert removed.old_versions == ds.version - 1
    ds = lance.dataset(uri)
    assert [v["version"] for v in ds.versions()] == [ds.version]
    assert ds.count_rows() == 22 and ds.to_table(columns=["y"])["y"].null_count == 22


def test_a_ray_worker_reads_s3_with_the_inherited_environment(s3_bucket, ray_session):
    """Workers of the session's Ray see AWS_* because s3_bucket set them before Ray started (the autouse
    fixture in tests/conftest.py orders it so); nothing is passed to the task but URIs."""
    import ray

    base = fs.join(s3_bucket.uri, uuid.uuid4().hex)
    table, side = fs.join(base, "t.lance"), fs.join(base, "stats.json")
    lance.write_dataset(_table(0, 7), table)
    fs.write_json(side, {"rows": 7})

    @ray.remote
    def read(table_uri: str, side_uri: str):
        import lance

        from lumos.floor import fs

        return os.environ.get("AWS_ENDPOINT_URL"), lance.dataset(table_uri).count_rows(), fs.read_json(side_uri)

    assert ray.get(read.remote(table, side)) == (s3_bucket.endpoint, 7, {"rows": 7})
