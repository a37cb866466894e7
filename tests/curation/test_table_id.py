"""An images table's id (schemas/images.py META_TABLE_ID) is written once, when the table is created, and
kept by every later write: a resumed job (its schema built anew, with a new id of its own), `score` and
`compact`; a table created anew gets another."""

import lance
from test_mix_and_score import _table
from test_unit_writer import _rows

from lumos.curation.compact_job import compact_table
from lumos.curation.dump_job import ScoreConfig
from lumos.curation.mix_job import run_mix
from lumos.curation.score_job import score_table
from lumos.curation.unit_writer import UnitTable, write_unit
from lumos.schemas import images as cols


def _id(uri: str) -> str | None:
    return cols.table_id_of(lance.dataset(uri).schema)


def test_the_id_is_written_at_creation_and_kept_by_a_resumed_job(tmp_path):
    uri, keys = str(tmp_path / "t.lance"), ["a", "b", "c"]
    schema = cols.images_schema({"job": 1}, unique_ids=True)
    table = UnitTable(uri, schema, keys, commit_every=3600)
    created = _id(uri)
    assert created == cols.table_id_of(schema) and len(created) == 32
    table.add(write_unit(0, [_rows(["x"], [None])], uri, schema))
    table.commit()
    assert _id(uri) == created

    rerun = cols.images_schema({"job": 1}, unique_ids=True)  # what a re-run of the job builds
    assert cols.table_id_of(rerun) != created
    again = UnitTable(uri, rerun, keys)
    assert again.pending() == [1, 2]
    again.add(write_unit(1, [_rows(["y"], [None])], uri, rerun))
    again.commit()
    again.add(write_unit(2, [_rows(["z"], [None])], uri, rerun))
    again.finish()
    ds = lance.dataset(uri)
    assert _id(uri) == created and ds.count_rows() == 3 and cols.has_unique_ids(ds.schema)

    bare = str(tmp_path / "bare.lance")  # a writer whose schema has no id still creates the table with one
    UnitTable(bare, cols.IMAGES_SCHEMA, keys)
    assert _id(bare) not in (None, created)


def test_score_and_compact_keep_the_id_and_a_mix_is_a_new_table(tmp_path, ray_session):
    path = _table(str(tmp_path / "images.lance"), "sam", [(f"k{i}", f"s{i}", i) for i in range(6)],
                  rows_per_fragment=2)
    created = _id(path)
    assert created
    score_table(path, ScoreConfig(model="tiny"), say=lambda *_: None)
    assert _id(path) == created
    compact_table(path, rows_per_fragment=100, say=lambda *_: None)
    assert _id(path) == created and len(lance.dataset(path).get_fragments()) == 1

    run_mix([path], str(tmp_path / "mix"), {}, dedup=True, seed=0, say=lambda *_: None)
    mixed = _id(str(tmp_path / "mix" / "images.lance"))
    assert mixed not in (None, created)
