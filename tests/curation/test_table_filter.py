"""`lumos-curate filter` on real Lance images tables: the web path's filters and reason names, rows deleted in
place (deletion files only, no data file touched), a re-run that drops nothing, a filtered table that
`lumos-encode` follows row for row, and refusals in one line."""

import json
import math
import os

import lance
import pyarrow as pa
import pytest

from lumos.curation.sample import encode, synthetic_image
from lumos.curation.table_filter import TableFilterConfig, filter_table, stats_file
from lumos.floor.errors import UserError
from lumos.floor.output_lock import output_lock
from lumos.pipeline.encode_job import EncoderConfig, run_encode
from lumos.schemas import features
from lumos.schemas import images as cols

# key: (original width, original height, aesthetic), 4 rows a fragment
ROWS = {
    # fragment 0: loses two rows
    "k0": (1024, 768, 6.0),
    "k1": (511, 1024, 6.0),  # too_small
    "k2": (512, 512, 5.0),  # both exactly at the bound: kept
    "k3": (800, 600, 4.99),  # aesthetic_too_low
    # fragment 1: loses three
    "k4": (800, 600, None),  # aesthetic_missing
    "k5": (800, 600, math.nan),  # aesthetic_missing
    "k6": (300, 200, None),  # too_small: the size filter comes first, as on the web path
    "k7": (2000, 1500, 7.5),
    # fragment 2: loses all four, so Lance removes it
    "k8": (100, 100, 9.0),  # too_small
    "k9": (900, 900, 1.0),  # aesthetic_too_low
    "k10": (512, 400, 2.0),  # too_small (and too low)
    "k11": (600, 600, math.inf),  # aesthetic_missing
    # fragment 3: loses none
    "k12": (640, 640, 5.5),
    "k13": (700, 512, 8.0),
}
KEPT = {"k0", "k2", "k7", "k12", "k13"}
DROPPED = {"too_small": 4, "aesthetic_too_low": 2, "aesthetic_missing": 3}


def _images(path, rows=ROWS, per_fragment=4):
    """An images table as lumos-curate writes it (unique ids marked), small real JPEGs, the given sizes and
    scores as metadata."""
    data = [{cols.ID: cols.make_id("test", key), cols.SOURCE: "test", cols.KEY: key, cols.ORIGINAL_WIDTH: w,
             cols.ORIGINAL_HEIGHT: h, cols.WIDTH: 96, cols.HEIGHT: 80, cols.AESTHETIC: score, cols.SHA256: f"s{i}",
             cols.IMAGE: encode(synthetic_image(96, 80, seed=i))}
            for i, (key, (w, h, score)) in enumerate(rows.items())]
    schema = cols.images_schema({"job": {"source": "test"}}, unique_ids=True)
    lance.write_dataset(pa.Table.from_pylist(data, schema=schema), path, schema=schema, max_rows_per_file=per_fragment)
    return path


def _data_files(path) -> dict[str, int]:
    """Every file under the table's data/ folder: name → size."""
    folder = os.path.join(path, "data")
    return {name: os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)}


def _table_files(path) -> set[str]:
    """Every file of the table but its manifests and transaction records, relative to it."""
    out = set()
    for root, _, names in os.walk(path):
        rel = os.path.relpath(root, path)
        if rel.split(os.sep)[0] not in ("_versions", "_transactions"):
            out |= {os.path.normpath(os.path.join(rel, n)) for n in names}
    return out


def _keys(path) -> set[str]:
    return set(lance.dataset(path).to_table(columns=[cols.KEY])[cols.KEY].to_pylist())


def _quiet(*_):
    pass


def test_filter_deletes_in_place_counts_per_reason_and_encode_follows(tmp_path, ray_session):
    path = _images(str(tmp_path / "images.lance"))
    files, everything, version = _data_files(path), _table_files(path), lance.dataset(path).version
    blobs_before = {r[cols.KEY]: r for r in lance.dataset(path).to_table(columns=[cols.KEY, cols.SHA256]).to_pylist()}

    earlier = str(tmp_path / "earlier.lance")  # features made before the filter
    run_encode(path, earlier, [EncoderConfig("tiny-vae", resolution=64)], batch_size=4, say=_quiet)
    files, everything = _data_files(path), _table_files(path)

    stats = filter_table(path, TableFilterConfig(min_aesthetic=5.0, min_size=512), say=_quiet)
    assert _keys(path) == KEPT
    assert stats["rows"] == 14 and stats["kept"] == 5 and stats["dropped"] == DROPPED
    assert stats["thresholds"] == {"min_aesthetic": 5.0, "min_size": 512,
                                   "size_columns": [cols.ORIGINAL_WIDTH, cols.ORIGINAL_HEIGHT]}
    assert stats["version_before"] == version and stats["version_after"] == version + 1  # one commit
    assert stats["fragments_with_deletions_added"] == 2 and stats["fragments_removed"] == 1

    ds = lance.dataset(path)
    assert _data_files(path) == files  # no data file written, rewritten or removed
    added = _table_files(path) - everything
    assert everything <= _table_files(path) and len(added) == 2 and all(a.startswith("_deletions") for a in added)
    deletions = {f.fragment_id: f.metadata.deletion_file for f in ds.get_fragments()}
    assert sorted(deletions) == [0, 1, 3]  # fragment 2 lost every row
    assert deletions[0].num_deleted_rows == 2 and deletions[1].num_deleted_rows == 3 and deletions[3] is None
    assert cols.has_unique_ids(ds.schema)  # the table's metadata is kept
    kept = {r[cols.KEY]: r for r in ds.to_table(columns=[cols.KEY, cols.SHA256]).to_pylist()}
    assert kept == {k: blobs_before[k] for k in KEPT}
    with open(stats_file(path)) as f:
        assert json.load(f) == stats
    assert stats_file(path) == str(tmp_path / "images.filter.stats.json")

    again = filter_table(path, TableFilterConfig(min_aesthetic=5.0, min_size=512), say=_quiet)  # a no-op
    assert again["rows"] == again["kept"] == 5 and again["dropped"] == {}
    assert again["version_before"] == again["version_after"] == version + 1
    assert lance.dataset(path).version == version + 1 and _data_files(path) == files
    with open(stats_file(path)) as f:
        assert json.load(f) == stats  # the stats of the run that deleted

    with pytest.raises(UserError, match="removed or rewritten since"):  # they no longer follow the table
        run_encode(path, earlier, [EncoderConfig("tiny-dino", resolution=64)], batch_size=4, say=_quiet)
    out = str(tmp_path / "features.lance")
    run_encode(path, out, [EncoderConfig("tiny-vae", resolution=64)], batch_size=4, say=_quiet)
    table = lance.dataset(out).to_table(columns=[cols.ID, features.ok_column("tiny-vae-64")])
    assert sorted(table[cols.ID].to_pylist()) == sorted(cols.make_id("test", k) for k in KEPT)
    assert all(table[features.ok_column("tiny-vae-64")].to_pylist())


def test_each_filter_alone_and_a_later_stricter_run(tmp_path):
    size_only = _images(str(tmp_path / "size.lance"))
    stats = filter_table(size_only, TableFilterConfig(min_size=512), say=_quiet)
    assert stats["dropped"] == {"too_small": 4} and _keys(size_only) == set(ROWS) - {"k1", "k6", "k8", "k10"}

    score_only = _images(str(tmp_path / "score.lance"))
    stats = filter_table(score_only, TableFilterConfig(min_aesthetic=5.0), say=_quiet)
    assert stats["dropped"] == {"aesthetic_too_low": 3, "aesthetic_missing": 4}  # k10 and k6 now count here
    stricter = filter_table(score_only, TableFilterConfig(min_aesthetic=6.0), say=_quiet)
    assert stricter["rows"] == 7 and stricter["dropped"] == {"aesthetic_too_low": 2}  # k2 (5.0), k12 (5.5)
    assert _keys(score_only) == {"k0", "k1", "k7", "k8", "k13"}
    with open(stats_file(score_only)) as f:  # the earlier run's stats are kept in the file
        assert json.load(f)["earlier"][0]["dropped"] == {"aesthetic_too_low": 3, "aesthetic_missing": 4}


def test_refusals_are_one_line_and_write_nothing(tmp_path):
    from typer.testing import CliRunner

    from lumos.curation.cli import app

    path = _images(str(tmp_path / "images.lance"))
    version = lance.dataset(path).version

    def refused(*args):
        result = CliRunner().invoke(app, ["filter", "--input", path, *args])
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr
        return lines[0]

    assert "nothing to filter" in refused()
    assert "--min-aesthetic -1.0: must be a number >= 0" in refused("--min-aesthetic", "-1")
    assert "--min-size -5: must be a number >= 0" in refused("--min-size", "-5")
    with output_lock(path, "another writer"):  # a second writer is refused
        assert "in use by another process: another writer" in refused("--min-size", "512")
    assert lance.dataset(path).version == version and not os.path.exists(stats_file(path))

    unscored = _images(str(tmp_path / "unscored.lance"), {k: (w, h, None) for k, (w, h, _) in ROWS.items()})
    with pytest.raises(UserError, match="no row of .* has an aesthetic score; score it first"):
        filter_table(unscored, TableFilterConfig(min_aesthetic=5.0), say=_quiet)
    assert lance.dataset(unscored).count_rows() == 14

    job = tmp_path / "job"  # a job folder, not its table
    _images(str(job / "images.lance"))
    with pytest.raises(UserError, match="is a lumos-curate job folder; pass its table"):
        filter_table(str(job), TableFilterConfig(min_size=512), say=_quiet)
    (job / "_work").mkdir()
    (job / "_work" / "job.json").write_text("{}")  # the job that writes it has not finished (no stats.json)
    with pytest.raises(UserError, match="has not finished"):
        filter_table(str(job / "images.lance"), TableFilterConfig(min_size=512), say=_quiet)

    result = CliRunner().invoke(app, ["filter", "--input", path, "--min-size", "512"])  # the command itself
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == f"filtered 14 rows: kept 10, dropped 4 (too_small 4); version {version} -> " \
                                    f"{version + 1}"
