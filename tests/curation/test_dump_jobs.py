"""End to end through real Ray, the tiny open_clip scorer and Lance: SA-1B tars, JourneyDB (files and
tgz, with and without Task2), ImageNet (ImageFolder and flat), each with a corrupt and a too-small image."""

import io
import json
import os
import tarfile

import lance
import pytest
from PIL import Image

from dump_files import CORRUPT, add, jpeg
from lumos.curation.dump_job import ScoreConfig, run_dump_job
from lumos.curation.dumps import ImageNetReader, JourneyDBReader, SamReader
from lumos.curation.prepare import PrepareConfig
from lumos.schemas import images as cols



def _run(reader, tmp_path, min_size=512, score=ScoreConfig(model="tiny")):
    stats = run_dump_job(reader, str(tmp_path / "out"), PrepareConfig(min_size=min_size, image_size=512), score,
                         {"input": "fixture"}, say=lambda *_: None)
    ds = lance.dataset(str(tmp_path / "out" / "images.lance"))
    cols.validate(ds.schema)
    rows = ds.to_table(columns=[c for c in cols.IMAGES_SCHEMA.names if c != cols.IMAGE]).to_pylist()
    images = [Image.open(io.BytesIO(b.read())) for b in ds.take_blobs(cols.IMAGE, indices=list(range(len(rows))))]
    assert stats["rows"] == stats["kept"] + sum(stats["dropped"].values())
    for row, im in zip(rows, images):
        assert im.mode == "RGB" and im.size == (row[cols.WIDTH], row[cols.HEIGHT])
        assert min(im.size) == min(512, row[cols.ORIGINAL_WIDTH], row[cols.ORIGINAL_HEIGHT])
        assert row[cols.ID] == cols.make_id(reader.source, row[cols.KEY])
        assert row[cols.AESTHETIC] is not None
    return stats, {r[cols.KEY]: r for r in rows}


def test_sam_tars_with_sidecars_and_captions(tmp_path, ray_session):
    src = tmp_path / "sa1b"
    src.mkdir()
    members = {
        "a": [("sa_1.jpg", jpeg(800, 600, 1)), ("sa_1.json", {"width": 800, "height": 600}),
              ("sa_2.jpg", jpeg(512, 700, 2)), ("sa_2.json", {"width": 512, "height": 700}),
              ("sa_3.jpg", CORRUPT), ("sa_3.json", {"width": 800, "height": 600})],
        "b": [("sa_4.jpg", jpeg(400, 300, 4)), ("sa_4.json", {"width": 400, "height": 300}),
              ("sa_5.jpg", jpeg(800, 600, 5)), ("sa_5.json", {"width": 1024, "height": 768}),
              ("sa_6.jpg", jpeg(800, 600, 6)), ("sa_7.json", {"width": 800, "height": 600})],
    }
    for tar_name, files in members.items():
        with tarfile.open(src / f"sa_00000{tar_name}.tar", "w") as tar:
            for name, content in files:
                if name.endswith(".json"):
                    content = json.dumps({"image": {"image_id": 1, "file_name": name.replace("json", "jpg"),
                                                    **content}, "annotations": []}).encode()
                add(tar, name, content)
    captions = tmp_path / "captions.jsonl"
    captions.write_text(json.dumps({"file_name": "sa_1.jpg", "caption": "a street"}) + "\n")
    reader = SamReader(str(src), captions=str(captions))
    stats, kept = _run(reader, tmp_path)
    assert set(kept) == {"sa_1.jpg", "sa_2.jpg"}
    assert stats["dropped"] == {"failed_to_decode": 1, "too_small": 1, "size_mismatch": 1,
                                "missing_annotation": 1, "missing_image": 1}
    assert kept["sa_1.jpg"][cols.CAPTION] == "a street" and kept["sa_2.jpg"][cols.CAPTION] is None
    assert (kept["sa_1.jpg"][cols.WIDTH], kept["sa_1.jpg"][cols.HEIGHT]) == (683, 512)


def test_journeydb_files_and_archives_with_and_without_task2(tmp_path, ray_session):
    src = tmp_path / "jdb"
    (src / "000").mkdir(parents=True)
    (src / "000" / "a.jpg").write_bytes(jpeg(640, 640, 1))
    (src / "000" / "b.jpg").write_bytes(jpeg(768, 512, 2))
    (src / "000" / "bad.jpg").write_bytes(CORRUPT)
    (src / "000" / "small.jpg").write_bytes(jpeg(300, 300, 3))
    with tarfile.open(src / "001.tgz", "w:gz") as tar:
        add(tar, "001/c.jpg", jpeg(1024, 1024, 4))
    lines = [
        {"img_path": "./000/a.jpg", "prompt": "a castle --ar 1:1", "Task2": {"Caption": "A castle on a hill."}},
        {"img_path": "./000/b.jpg", "prompt": "a lake"},
        {"img_path": "./000/bad.jpg", "prompt": "broken", "Task2": {"Caption": "x"}},
        {"img_path": "./000/small.jpg", "prompt": "tiny"},
        {"img_path": "./000/gone.jpg", "prompt": "missing file"},
        {"img_path": "./001/c.jpg", "prompt": "a forest", "Task2": {"Caption": "A dense forest."}},
    ]
    annotations = tmp_path / "train_anno.jsonl"
    annotations.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    stats, kept = _run(JourneyDBReader(str(src), str(annotations)), tmp_path)
    assert set(kept) == {"000/a.jpg", "000/b.jpg", "001/c.jpg"}
    assert stats["dropped"] == {"failed_to_decode": 1, "too_small": 1, "missing_image": 1}
    assert (kept["000/a.jpg"][cols.CAPTION], kept["000/a.jpg"][cols.LONG_CAPTION]) == \
        ("a castle --ar 1:1", "A castle on a hill.")
    assert (kept["000/b.jpg"][cols.CAPTION], kept["000/b.jpg"][cols.LONG_CAPTION]) == ("a lake", None)
    assert kept["001/c.jpg"][cols.LONG_CAPTION] == "A dense forest."


@pytest.mark.parametrize("layout", ["folder", "flat"])
def test_imagenet_layouts_store_synset_and_class_index(tmp_path, ray_session, layout):
    src = tmp_path / "imagenet"
    files = {("n01443537", "x1"): jpeg(500, 375, 1), ("n01440764", "x2"): jpeg(300, 400, 2),
             ("n01440764", "x3"): CORRUPT, ("n01443537", "x4"): jpeg(200, 150, 4)}
    for (synset, stem), data in files.items():
        path = (src / "train" / synset / f"{stem}.JPEG" if layout == "folder"
                else src / "val" / f"ILSVRC2012_val_{stem}_{synset}.JPEG")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    stats, kept = _run(ImageNetReader(str(src)), tmp_path, min_size=256)
    assert stats["dropped"] == {"failed_to_decode": 1, "too_small": 1}
    by_synset = {r[cols.SYNSET]: r for r in kept.values()}
    assert set(by_synset) == {"n01440764", "n01443537"}
    assert by_synset["n01440764"][cols.CLASS_INDEX] == 0 and by_synset["n01443537"][cols.CLASS_INDEX] == 1
    assert all(os.path.basename(k).startswith(("x", "ILSVRC")) for k in kept)


def test_killed_sam_ingest_resumes_from_its_committed_tars(tmp_path, ray_session):
    """A SAM ingest killed (SIGKILL) after some tars were committed, re-run: the committed tars are not read
    again (they are made unreadable before the re-run), and the table equals an uninterrupted run's, every
    id once, one fragment a tar."""
    import subprocess
    import sys

    from kill_after import kill_after_commits

    src = tmp_path / "sa1b"
    src.mkdir()
    tars = 8
    for t in range(tars):
        with tarfile.open(src / f"sa_{t:06d}.tar", "w") as tar:
            for i in range(6):
                n = t * 6 + i
                add(tar, f"sa_{n}.jpg", jpeg(96, 64, n))
                add(tar, f"sa_{n}.json", json.dumps({"image": {"width": 96, "height": 64}}).encode())
    out = tmp_path / "killed"
    cli = [sys.executable, "-m", "lumos.curation.cli", "sam", "--input", str(src), "--output", str(out),
           "--aesthetic-model", "none", "--min-aesthetic", "0", "--min-size", "0", "--image-size", "64"]
    images = str(out / "images.lance")
    committed = kill_after_commits(cli + ["--commit-every", "0"], images, 2)
    assert 2 <= len(committed) < tars
    for i in committed:  # read again, these would be unreadable_archive rows
        (src / f"sa_{i:06d}.tar").write_bytes(b"not a tar")
    resumed = subprocess.run(cli, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["rows"] == stats["kept"] == tars * 6 and not stats["unreadable_archives"]

    ds = lance.dataset(images)
    keys = ds.to_table(columns=[cols.KEY])[cols.KEY].to_pylist()
    assert sorted(keys) == sorted(f"sa_{n}.jpg" for n in range(tars * 6))
    assert sorted(f.count_rows() for f in ds.get_fragments()) == [6] * tars
