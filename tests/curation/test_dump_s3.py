"""The dump jobs read an object store as they read a local folder: the same SA-1B, JourneyDB and ImageNet
dumps, written to a local folder and to S3 (moto on 127.0.0.1), give identical images tables and stats
(real Ray, the tiny open_clip scorer, Lance; tars read in place, captions and annotations in Ray tasks)."""

import json
import os
import tarfile

import lance
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from dump_files import CORRUPT, add, jpeg, sidecar
from lumos.curation.dump_job import ScoreConfig, run_dump_job
from lumos.curation.dumps import ImageNetReader, JourneyDBReader, SamReader
from lumos.curation.prepare import PrepareConfig
from lumos.floor import fs
from lumos.schemas import images as cols

COMPARED = (cols.ID, cols.KEY, cols.CAPTION, cols.LONG_CAPTION, cols.SYNSET, cols.CLASS_INDEX, cols.SHA256,
            cols.WIDTH, cols.HEIGHT, cols.ORIGINAL_WIDTH, cols.ORIGINAL_HEIGHT)


def _upload(local, uri):
    """Every file under the local folder `local` to the same relative key under `uri`."""
    for folder, _, names in os.walk(local):
        for name in names:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                fs.write_bytes(fs.join(uri, *os.path.relpath(path, local).split(os.sep)), f.read())


def _table(out):
    ds = lance.dataset(os.path.join(out, "images.lance"))
    rows = ds.to_table(columns=[*COMPARED, cols.AESTHETIC]).to_pylist()
    blobs = ds.take_blobs(cols.IMAGE, indices=list(range(len(rows))))
    return {r[cols.ID]: {**r, "bytes": b.read()} for r, b in zip(rows, blobs)}


def _scores(rows):  # scored in batches that may be made up otherwise: equal up to float rounding
    return {i: pytest.approx(r.pop(cols.AESTHETIC), rel=1e-4, abs=1e-5) for i, r in rows.items()}


def _both(make_reader, local, remote, out, min_size=512):
    """The job run from the local dump and from S3: (stats, table) of each, after checking they are equal."""
    results = []
    for name, root in (("local", local), ("s3", remote)):
        stats = run_dump_job(make_reader(root), os.path.join(out, name), PrepareConfig(min_size=min_size,
                             image_size=512), ScoreConfig(model="tiny"), {"input": root}, say=lambda *_: None)
        stats.pop("timings")
        for item in stats["unreadable_archives"]:  # the same archive, named by where it was read
            assert item["path"].startswith(root)
            item["path"] = item["path"][len(root):]
        results.append((stats, _table(os.path.join(out, name))))
    (local_stats, local_rows), (s3_stats, s3_rows) = results
    assert s3_stats == local_stats
    assert _scores(local_rows) == _scores(s3_rows)
    assert s3_rows == local_rows
    assert local_stats["kept"] == len(local_rows) > 0
    return local_stats, local_rows


@pytest.fixture
def bucket(s3_bucket, request):
    return f"{s3_bucket.uri}/{request.node.name}"


def test_sam_from_s3_equals_local(tmp_path, bucket, ray_session):
    src = tmp_path / "sa1b"
    src.mkdir()
    images = {n: jpeg(640, 512, n) for n in range(1, 8)}
    with tarfile.open(src / "sa_000000.tar", "w") as tar:
        for n in (1, 2, 3):
            add(tar, f"sa_{n}.jpg", images[n])
            add(tar, f"sa_{n}.json", sidecar(640, 512))
        add(tar, "sa_4.jpg", CORRUPT)
        add(tar, "sa_4.json", sidecar(640, 512))
    with tarfile.open(src / "sa_000001.tar", "w") as tar:
        for name, data in [("sa_2.jpg", images[2]), ("sa_2.json", sidecar(640, 512)),  # repeated, same bytes
                           ("sa_3.jpg", images[5]), ("sa_3.json", sidecar(640, 512)),  # repeated, other bytes
                           ("sa_5.jpg", images[5]), ("sa_5.json", sidecar(800, 600)),  # size mismatch
                           ("sa_6.jpg", images[6]), ("sa_6.json", sidecar(640, 512))]:
            add(tar, name, data)
    with tarfile.open(tmp_path / "whole.tar", "w") as tar:
        for n in (7, 1):
            add(tar, f"sub/sa_{n + 10}.jpg", images[n])
            add(tar, f"sub/sa_{n + 10}.json", sidecar(640, 512))
    with tarfile.open(tmp_path / "whole.tar") as tar:
        cut = tar.getmember("sub/sa_11.jpg").offset_data + 500
    (src / "sa_000002.tar").write_bytes((tmp_path / "whole.tar").read_bytes()[:cut])  # truncated in sa_11.jpg
    captions = tmp_path / "captions"
    captions.mkdir()
    (captions / "part-0.jsonl").write_text("\n".join(json.dumps(x) for x in [
        {"file_name": "images/sa_1.jpg", "caption": "a street"},  # a path: joined by its file name
        {"file_name": "sa_2.jpg", "caption": "a square"},
        {"file_name": "sa_1.jpg", "caption": "not the first row"},
        {"file_name": "sa_99.jpg", "caption": "no such image"}]) + "\n")
    pq.write_table(pa.table({"filename": ["sa_6.jpg", "sa_2.jpg"], "text": ["a bridge", "a later square"]}),
                   captions / "part-1.parquet")  # formats may mix; sa_2's row in part-0 comes first
    _upload(src, f"{bucket}/sa1b")
    _upload(captions, f"{bucket}/captions")

    def reader(root):
        return SamReader(root, captions=str(captions) if fs.is_local(root) else f"{bucket}/captions")

    stats, rows = _both(reader, str(src), f"{bucket}/sa1b", str(tmp_path / "out"))
    kept = {r[cols.KEY]: r for r in rows.values()}
    assert set(kept) == {"sa_1.jpg", "sa_2.jpg", "sa_3.jpg", "sa_6.jpg", "sa_17.jpg"}
    assert stats["dropped"] == {"duplicate_key": 1, "duplicate_key_conflict": 1, "failed_to_decode": 1,
                                "size_mismatch": 1, "unreadable_archive": 1}
    assert [(kept[k][cols.CAPTION]) for k in ("sa_1.jpg", "sa_2.jpg", "sa_3.jpg", "sa_6.jpg")] == \
        ["a street", "a square", None, "a bridge"]
    assert [item["path"] for item in stats["unreadable_archives"]] == ["/sa_000002.tar"]
    assert "sub/sa_11.jpg is cut off" in stats["unreadable_archives"][0]["error"]


def test_journeydb_from_s3_equals_local(tmp_path, bucket, ray_session):
    src = tmp_path / "jdb"
    (src / "000").mkdir(parents=True)
    (src / "000" / "a.jpg").write_bytes(jpeg(640, 640, 1))
    (src / "000" / "b.jpg").write_bytes(jpeg(768, 512, 2))
    (src / "000" / "bad.jpg").write_bytes(CORRUPT)
    with tarfile.open(src / "001.tgz", "w:gz") as tar:
        add(tar, "001/c.jpg", jpeg(1024, 1024, 4))
        add(tar, "001/d.jpg", jpeg(600, 800, 5))
    anno = tmp_path / "anno"
    anno.mkdir()

    def line(path, prompt, **extra):
        return json.dumps({"img_path": path, "prompt": prompt, **extra})

    (anno / "train_0.jsonl").write_text("\n".join([
        line("./000/a.jpg", "a castle", Task2={"Caption": "A castle on a hill."}),
        line("./000/b.jpg", "a lake"),
        line("./000/a.jpg", "a castle", Task2={"Caption": "A castle on a hill."}),  # repeated: duplicate_key
        "not json",
        line("./000/bad.jpg", "broken"),
        line("../outside.jpg", "out"),
        line("./001/c.jpg", "a forest", Task2={"Caption": "A dense forest."})]) + "\n")
    (anno / "train_1.jsonl").write_text("\n".join([
        line("./001/d.jpg", "a tower"),
        line("./000/b.jpg", "another lake"),  # the same key in a later file, another prompt: a conflict
        line("./000/gone.jpg", "missing file")]) + "\n")
    _upload(src, f"{bucket}/jdb")
    _upload(anno, f"{bucket}/anno")

    def reader(root):
        return JourneyDBReader(root, str(anno) if fs.is_local(root) else f"{bucket}/anno")

    stats, rows = _both(reader, str(src), f"{bucket}/jdb", str(tmp_path / "out"), min_size=256)
    kept = {r[cols.KEY]: r for r in rows.values()}
    assert set(kept) == {"000/a.jpg", "000/b.jpg", "001/c.jpg", "001/d.jpg"}
    assert stats["dropped"] == {"duplicate_key": 1, "duplicate_key_conflict": 1, "bad_annotation": 1,
                                "failed_to_decode": 1, "outside_input": 1, "missing_image": 1}
    assert (kept["000/a.jpg"][cols.CAPTION], kept["000/a.jpg"][cols.LONG_CAPTION]) == \
        ("a castle", "A castle on a hill.")
    assert kept["000/b.jpg"][cols.CAPTION] == "a lake" and kept["001/d.jpg"][cols.CAPTION] == "a tower"


def test_imagenet_from_s3_equals_local(tmp_path, bucket, ray_session):
    src = tmp_path / "imagenet"
    files = {"train/n01443537/x1.JPEG": jpeg(500, 375, 1), "train/n01440764/x2.JPEG": jpeg(300, 400, 2),
             "train/n01440764/x3.JPEG": CORRUPT, "train/n01443537/x4.JPEG": jpeg(200, 150, 4),
             "val/ILSVRC2012_val_00000001_n01440764.JPEG": jpeg(320, 320, 5), "train/notes.txt": b"not an image"}
    for rel, data in files.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(data)
    _upload(src, f"{bucket}/imagenet")

    stats, rows = _both(ImageNetReader, str(src), f"{bucket}/imagenet", str(tmp_path / "out"), min_size=256)
    kept = {r[cols.KEY]: r for r in rows.values()}
    assert set(kept) == {"train/n01443537/x1.JPEG", "train/n01440764/x2.JPEG",
                         "val/ILSVRC2012_val_00000001_n01440764.JPEG"}
    assert stats["dropped"] == {"failed_to_decode": 1, "too_small": 1}
    assert {k: (r[cols.SYNSET], r[cols.CLASS_INDEX]) for k, r in kept.items()} == {
        "train/n01443537/x1.JPEG": ("n01443537", 1), "train/n01440764/x2.JPEG": ("n01440764", 0),
        "val/ILSVRC2012_val_00000001_n01440764.JPEG": ("n01440764", 0)}
