"""`mix` and `score` on real Lance tables through Ray."""

import hashlib
import os

import lance
import pyarrow as pa
import pytest

from lumos.curation.aesthetic import load_aesthetic_model, preprocess
from lumos.curation.dump_job import ScoreConfig
from lumos.curation.mix_job import run_mix
from lumos.curation.sample import encode, synthetic_image
from lumos.curation.score_job import score_table
from lumos.floor.errors import UserError
from lumos.schemas import images as cols


def _table(path, source, rows, rows_per_fragment=1024):
    """rows: (key, sha256 tag, seed); the image bytes differ by seed."""
    data = [{cols.ID: cols.make_id(source, key), cols.SOURCE: source, cols.KEY: key, cols.ORIGINAL_WIDTH: 96,
             cols.ORIGINAL_HEIGHT: 80, cols.WIDTH: 96, cols.HEIGHT: 80, cols.SHA256: tag,
             cols.IMAGE: encode(synthetic_image(96, 80, seed)), cols.CAPTION: f"{source} {key}"}
            for key, tag, seed in rows]
    schema = cols.images_schema({"job": {"source": source}})
    lance.write_dataset(pa.Table.from_pylist(data, schema=schema), path, schema=schema,
                        max_rows_per_file=rows_per_fragment)
    return path


def _read(path):
    ds = lance.dataset(path)
    rows = ds.to_table(columns=[cols.ID, cols.SOURCE, cols.KEY, cols.SHA256]).to_pylist()
    blobs = [b.read() for b in ds.take_blobs(cols.IMAGE, indices=list(range(len(rows))))]
    return {r[cols.ID]: (r, b) for r, b in zip(rows, blobs)}


def test_mix_removes_duplicates_exactly_honours_caps_and_keeps_ids(tmp_path, ray_session):
    a = _table(str(tmp_path / "a.lance"), "laion",
               [("a1", "s1", 1), ("a2", "s2", 2), ("a3", "s3", 3), ("a5", "s1", 5)])
    b = _table(str(tmp_path / "b.lance"), "sam",
               [("b1", "s2", 11), ("b2", "s6", 12), ("b3", "s7", 13), ("b4", "s8", 14), ("b5", "s9", 15)])
    stats = run_mix([a, b], str(tmp_path / "mix"), {"sam": 2}, dedup=True, seed=0, say=lambda *_: None)
    mixed = _read(str(tmp_path / "mix" / "images.lance"))
    inputs = {**_read(a), **_read(b)}

    # a5 repeats a1's bytes in the same input: the smaller id of the two stays
    laion = {cols.make_id("laion", k) for k in ("a2", "a3")} | {min(cols.make_id("laion", k) for k in ("a1", "a5"))}
    sam_left = sorted((cols.make_id("sam", k) for k in ("b2", "b3", "b4", "b5")),
                      key=lambda i: hashlib.sha1(f"0:{i}".encode()).hexdigest())
    assert set(mixed) == laion | set(sam_left[:2])  # b1 repeats a2's bytes from a later input
    for id_, (row, blob) in mixed.items():  # ids and bytes carried over unchanged
        assert inputs[id_] == (row, blob)
    assert stats["rows"] == 9 and stats["kept"] == 5
    assert stats["sources"]["laion"] == {"rows": 4, "kept": 3, "dropped": {"duplicate_sha256": 1}}
    assert stats["sources"]["sam"] == {"rows": 5, "kept": 2, "dropped": {"duplicate_sha256": 1, "over_cap": 2}}
    assert stats["dropped"] == {"duplicate_sha256": 2, "over_cap": 2}

    again = run_mix([a, b], str(tmp_path / "mix2"), {"sam": 2}, dedup=True, seed=0, say=lambda *_: None)
    assert set(_read(str(tmp_path / "mix2" / "images.lance"))) == set(mixed) and again["kept"] == 5
    with pytest.raises(UserError, match="--take names sources the inputs do not have: coyo"):
        run_mix([a, b], str(tmp_path / "mix3"), {"coyo": 1}, dedup=True, seed=0)


def _files(path) -> dict[str, int]:
    """Every data file the table's latest version reads from: path → size on disk."""
    return {d.path: os.path.getsize(os.path.join(path, "data", d.path))
            for f in lance.dataset(path).get_fragments() for d in f.metadata.files}


def test_score_fills_the_aesthetic_column_in_place(tmp_path, ray_session):
    path = _table(str(tmp_path / "t.lance"), "laion", [(f"k{i}", f"s{i}", i) for i in range(6)],
                  rows_per_fragment=2)
    before, files = _read(path), _files(path)
    assert len(files) == 3
    stats = score_table(path, ScoreConfig(model="tiny"), say=lambda *_: None)
    assert stats["rows"] == stats["scored"] == 6
    after = _files(path)  # the image and metadata files: the same paths, the same sizes; one new file a fragment
    assert {p: after.get(p) for p in files} == files and len(after) == 6
    ds = lance.dataset(path)
    scores = dict(zip(*(ds.to_table(columns=[cols.ID, cols.AESTHETIC])[c].to_pylist() for c in (cols.ID, cols.AESTHETIC))))
    model, transform = load_aesthetic_model("tiny"), preprocess(64)
    import io

    import torch
    from PIL import Image

    for id_, (row, blob) in before.items():
        x = transform(Image.open(io.BytesIO(blob))).unsqueeze(0)
        with torch.no_grad():
            emb = model.clip.encode_image(x)
            expected = float(model.mlp(emb / emb.norm(dim=-1, keepdim=True))[0, 0])
        assert scores[id_] == pytest.approx(expected, abs=1e-4)
    assert _read(path) == before  # ids, keys and image bytes untouched
    assert cols.job_of(ds.schema) == {"job": {"source": "laion"}}
    assert stats["mean"] == pytest.approx(sum(scores.values()) / 6)

    again = score_table(path, ScoreConfig(model="tiny"), say=lambda *_: None)  # refreshed: the same scores
    ds, refreshed = lance.dataset(path), _files(path)  # the image files again untouched; new score files replace
    assert again["scored"] == 6 and {p: refreshed.get(p) for p in files} == files and len(refreshed) == 6
    assert not set(refreshed) & (set(after) - set(files)) and not os.path.exists(os.path.join(path, "_staging_score"))
    assert dict(zip(*(ds.to_table(columns=[cols.ID, cols.AESTHETIC])[c].to_pylist()
                      for c in (cols.ID, cols.AESTHETIC)))) == scores


def _many(path, source, keys, tags, rows_per_fragment):
    """A table of small rows (one shared 1x1 JPEG), for counts rather than pixels."""
    image = encode(synthetic_image(8, 8, 0))
    n = len(keys)
    schema = cols.images_schema({"job": {"source": source}}, unique_ids=True)
    table = pa.table({cols.ID: [cols.make_id(source, k) for k in keys], cols.SOURCE: [source] * n, cols.KEY: keys,
                      cols.ORIGINAL_WIDTH: pa.array([8] * n, pa.int32()), cols.ORIGINAL_HEIGHT: pa.array([8] * n, pa.int32()),
                      cols.WIDTH: pa.array([8] * n, pa.int32()), cols.HEIGHT: pa.array([8] * n, pa.int32()),
                      cols.SHA256: tags, cols.IMAGE: pa.array([image] * n, pa.large_binary())})
    full = pa.table({f.name: table[f.name] if f.name in table.column_names else pa.nulls(n, f.type) for f in schema},
                    schema=schema)
    lance.write_dataset(full, path, schema=schema, max_rows_per_file=rows_per_fragment)
    return path


def test_mix_caps_are_exact_and_follow_the_seeded_order_at_size(tmp_path, ray_session):
    """3,000 + 2,000 rows, 10% of b's bytes also in a: the kept set equals a plain reference (first input wins a
    shared sha256, then the cap keeps the first N of sha1(seed:id)); one fragment of the mix per input fragment."""
    a_keys, b_keys = [f"a{i}" for i in range(3000)], [f"b{i}" for i in range(2000)]
    a_tags = [f"sa{i}" for i in range(3000)]
    b_tags = [f"sa{i}" if i % 10 == 0 else f"sb{i}" for i in range(2000)]  # every tenth repeats a's bytes
    a = _many(str(tmp_path / "a.lance"), "laion", a_keys, a_tags, 1000)
    b = _many(str(tmp_path / "b.lance"), "sam", b_keys, b_tags, 500)
    take = {"laion": 1234, "sam": 1700}
    stats = run_mix([a, b], str(tmp_path / "mix"), take, dedup=True, seed=7, say=lambda *_: None)

    def first(ids, n):
        return set(sorted(ids, key=lambda i: hashlib.sha1(f"7:{i}".encode()).hexdigest())[:n])

    laion = first([cols.make_id("laion", k) for k in a_keys], 1234)
    sam_left = [cols.make_id("sam", k) for k, t in zip(b_keys, b_tags) if t.startswith("sb")]
    sam = first(sam_left, 1700) if len(sam_left) > 1700 else set(sam_left)
    ds = lance.dataset(str(tmp_path / "mix" / "images.lance"))
    ids = ds.to_table(columns=[cols.ID])[cols.ID].to_pylist()
    assert len(ids) == len(set(ids)) and set(ids) == laion | sam
    assert stats["sources"]["laion"] == {"rows": 3000, "kept": 1234, "dropped": {"over_cap": 1766}}
    assert stats["sources"]["sam"] == {"rows": 2000, "kept": len(sam),
                                       "dropped": {"duplicate_sha256": 200, **({"over_cap": 1800 - 1700})}}
    assert len(ds.get_fragments()) == 3 + 4 and len(ds.versions()) == 1


def test_killed_mix_resumes_without_duplicates(tmp_path, ray_session):
    """A mix killed (SIGKILL) after some fragments were committed, re-run: the same table as an uninterrupted
    mix, every id once; the fragments committed before the kill keep their files."""
    import subprocess
    import sys

    from kill_after import kill_after_commits

    from lumos.curation.unit_writer import read_progress

    keys = [f"k{i}" for i in range(1200)]
    a = _many(str(tmp_path / "a.lance"), "laion", keys[:600], [f"s{i}" for i in range(600)], 50)
    b = _many(str(tmp_path / "b.lance"), "sam", keys[600:], [f"s{i - 600}" if i % 10 == 0 else f"s{i}" for i in range(600, 1200)], 50)
    out = str(tmp_path / "killed")
    cli = [sys.executable, "-m", "lumos.curation.cli", "mix", "--input", a, "--input", b, "--output", out,
           "--take", "sam=400", "--commit-every", "0"]
    images = os.path.join(out, "images.lance")
    committed = kill_after_commits(cli, images, 3)
    assert 3 <= len(committed) < read_progress(images).units == 24
    kept_files = _files(images)
    resumed = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert {p: s for p, s in _files(images).items() if p in kept_files} == kept_files

    reference = run_mix([a, b], str(tmp_path / "reference"), {"sam": 400}, dedup=True, seed=0, say=lambda *_: None)
    assert _read(images) == _read(str(tmp_path / "reference" / "images.lance"))
    assert reference["kept"] == lance.dataset(images).count_rows() == 600 + 400
