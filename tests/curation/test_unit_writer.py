"""The bookkeeping of tables written unit by unit: progress in the table's metadata, units made whole from
parts, and a reopened table that knows what is left (real Lance, no Ray)."""

import lance
import pyarrow as pa
import pytest

from lumos.curation.dump_job import PART_SCHEMA, whole_units
from lumos.curation.unit_writer import Progress, UnitTable, read_progress, write_unit
from lumos.floor.errors import UserError
from lumos.schemas import images as cols
from lumos.schemas.features import PART_PATH, PART_ROWS


def _parts(rows):
    return pa.Table.from_pylist([{cols.UNIT: u, PART_ROWS: n, cols.UNIT_ROWS: t, PART_PATH: f"p{u}-{k}"}
                                 for k, (u, n, t) in enumerate(rows)], schema=PART_SCHEMA)


def test_units_are_whole_when_their_count_is_reached_in_any_order():
    blocks = [_parts([(0, 64, None), (1, 10, 10)]), _parts([(0, 5, 69)]), _parts([(2, 3, None)]), _parts([(2, 4, 7)])]
    parts = {}
    got = [i for i in whole_units(blocks, [0, 1, 2, 3], parts) if i is not None]
    assert got == [1, 0, 2, 3]  # unit 3 gave no row: whole at the end, with no part
    assert parts == {0: ["p0-0", "p0-0"], 1: ["p1-1"], 2: ["p2-0", "p2-0"], 3: []}
    with pytest.raises(RuntimeError, match="work unit 0: 64 rows written of None"):
        list(whole_units([_parts([(0, 64, None)])], [0], {}))


def _rows(ids, reasons):
    n = len(ids)
    schema = cols.WORK_SCHEMA
    data = {f.name: pa.nulls(n, f.type) for f in schema}
    data.update({cols.ID: pa.array(ids, pa.string()), cols.SOURCE: pa.array(["s"] * n), cols.KEY: pa.array(ids),
                 cols.SHA256: pa.array(ids), cols.IMAGE: pa.array([b"x"] * n, pa.large_binary()),
                 cols.DROP_REASON: pa.array(reasons, pa.string())})
    for c in (cols.ORIGINAL_WIDTH, cols.ORIGINAL_HEIGHT, cols.WIDTH, cols.HEIGHT):
        data[c] = pa.array([1] * n, pa.int32())
    return pa.table(data, schema=schema)


def test_a_reopened_table_has_the_committed_units_and_their_counts(tmp_path):
    uri, schema = str(tmp_path / "t.lance"), cols.images_schema({"job": 1}, unique_ids=True)
    keys = ["a", "b", "c"]
    table = UnitTable(uri, schema, keys, commit_every=3600)
    assert table.pending() == [0, 1, 2]
    table.add(write_unit(0, [_rows(["x", "y"], [None, "too_small"])], uri, schema))
    table.add(write_unit(2, [_rows(["z"], [None]), _rows(["w"], [None])], uri, schema))
    table.commit()
    write_unit(1, [_rows(["v"], [None])], uri, schema)  # written, never committed: a killed run's orphan

    again = UnitTable(uri, schema, keys)
    assert again.pending() == [1]
    p = read_progress(uri)
    assert (p.rows, dict(p.dropped)) == (4, {"too_small": 1})
    assert sorted(f.count_rows() for f in lance.dataset(uri).get_fragments()) == [1, 2]
    assert Progress.from_json(p.to_json()) == p
    with pytest.raises(UserError, match="begun on other inputs"):
        UnitTable(uri, schema, ["a", "b"])
    again.add(write_unit(1, [_rows(["v"], [None])], uri, schema))
    result = again.finish()
    assert (result.rows, result.kept, dict(result.dropped)) == (5, 4, {"too_small": 1})
    assert sorted(lance.dataset(uri).to_table(columns=[cols.ID])[cols.ID].to_pylist()) == ["v", "w", "x", "z"]
    assert len(lance.dataset(uri).versions()) == 1
