"""Provenance after a table copy: the features name their images table by its id (schemas/images.py
META_TABLE_ID), not its path. A copied or moved pair of tables re-encoded the same way is a no-op, and one
whose images table grew since encodes the new rows only; a table made anew at the same path is another table,
refused with both ids."""

import json
import re
import shutil

import lance
import pyarrow as pa
import pytest
from test_encode_resume import _images

from lumos.curation.sample import encode, synthetic_image
from lumos.floor.errors import UserError
from lumos.pipeline.encode_job import EncoderConfig, run_encode
from lumos.schemas import features
from lumos.schemas import images as cols

VAE = [EncoderConfig("tiny-vae", resolution=64)]


def _provenance(out: str) -> dict:
    return features.provenance_of(features.str_metadata(lance.dataset(out).schema.metadata), "tiny-vae-64")


def test_a_copied_pair_of_tables_is_the_same_and_follows_new_rows(tmp_path, ray_session):
    first = tmp_path / "first"
    first.mkdir()
    images = _images(str(first / "images.lance"), count=8)
    table_id = cols.table_id_of(lance.dataset(images).schema)
    assert table_id and len(table_id) == 32
    run_encode(images, str(first / "features.lance"), VAE, say=lambda *_: None)
    made = _provenance(str(first / "features.lance"))["images"]
    assert made == {"table_id": table_id, "path": images, "version": lance.dataset(images).version}

    moved = tmp_path / "elsewhere" / "moved"
    shutil.copytree(first, moved)
    shutil.rmtree(first)  # a move: the old path is gone
    said = []
    result = run_encode(str(moved / "images.lance"), str(moved / "features.lance"), VAE, say=said.append)
    assert result["encoders"] == {} and said == [f"tiny-vae-64: already in {moved / 'features.lance'}, nothing to do"]

    schema = cols.images_schema({"job": {"source": "test"}}, unique_ids=True)  # its new id is not written
    rows = [{cols.ID: f"new{i}", cols.SOURCE: "test", cols.KEY: f"n{i}", cols.ORIGINAL_WIDTH: 96,
             cols.ORIGINAL_HEIGHT: 80, cols.WIDTH: 96, cols.HEIGHT: 80, cols.SHA256: f"n{i}",
             cols.IMAGE: encode(synthetic_image(96, 80, seed=100 + i))} for i in range(2)]
    lance.write_dataset(pa.Table.from_pylist(rows, schema=schema), str(moved / "images.lance"), schema=schema,
                        mode="append")  # the table grew after the move: one more fragment
    grown = lance.dataset(str(moved / "images.lance"))
    assert cols.table_id_of(grown.schema) == table_id  # an append keeps the table's metadata
    said = []
    result = run_encode(str(moved / "images.lance"), str(moved / "features.lance"), VAE, say=said.append)
    assert result["encoders"]["tiny-vae-64"]["encoded_now"] == 2 and lance.dataset(str(moved / "features.lance")).count_rows() == 10
    assert _provenance(str(moved / "features.lance"))["images"] == {
        "table_id": table_id, "path": str(moved / "images.lance"), "version": grown.version}


def test_a_table_made_anew_at_the_same_path_is_refused_with_both_ids(tmp_path, ray_session):
    path, out = str(tmp_path / "images.lance"), str(tmp_path / "features.lance")
    old = cols.table_id_of(lance.dataset(_images(path, count=4)).schema)
    run_encode(path, out, VAE, say=lambda *_: None)
    shutil.rmtree(path)
    new = cols.table_id_of(lance.dataset(_images(path, count=4)).schema)
    assert new != old
    with pytest.raises(UserError, match=r"already holds tiny-vae-64 features made differently \(images: "
                                        rf"\{{'table_id': '{old}'\}} then, \{{'table_id': '{new}'\}} now\)"):
        run_encode(path, out, VAE, say=lambda *_: None)


def test_a_table_without_an_id_is_named_by_its_path(tmp_path, ray_session):
    """Tables and features made before tables had an id: the path names the table, as it did then."""
    path, out = str(tmp_path / "old.lance"), str(tmp_path / "features.lance")
    _images(path, count=4)
    lance.dataset(path).update_schema_metadata({cols.META_TABLE_ID: None})
    assert cols.table_id_of(lance.dataset(path).schema) is None
    run_encode(path, out, VAE, say=lambda *_: None)
    assert set(_provenance(out)["images"]) == {"path", "version"}
    made = _provenance(out)
    lance.dataset(out).update_schema_metadata(  # as lumos-encode wrote it before: the path alone
        {features.META_ENCODER + "tiny-vae-64": json.dumps({**made, "images": path}, sort_keys=True)})
    said = []
    run_encode(path, out, VAE, say=said.append)
    assert said == [f"tiny-vae-64: already in {out}, nothing to do"]

    moved = str(tmp_path / "moved.lance")
    shutil.copytree(path, moved)
    with pytest.raises(UserError, match=re.escape(f"images: {{'path': {path!r}}} then, {{'path': {moved!r}}} now")):
        run_encode(moved, out, VAE, say=lambda *_: None)
