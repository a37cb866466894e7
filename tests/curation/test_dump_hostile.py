"""Hostile local dumps through the real job (Ray, the tiny open_clip scorer, Lance): repeated keys, damaged
archives, broken sidecars and annotation lines, paths out of --input, and pixels that need care (EXIF
orientation, 16-bit, float, very wide, palette with transparency). One SA-1B job and one JourneyDB job
carry all the cases; each asserts the exact counts and that every good row is in the table."""

import hashlib
import io
import json
import os
import shutil
import tarfile

import lance
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from dump_files import add, jpeg, sidecar
from lumos.curation.dump_job import ScoreConfig, run_dump_job
from lumos.curation.dumps import ImageNetReader, JourneyDBReader, SamReader
from lumos.curation.prepare import PrepareConfig
from lumos.floor.output_lock import LOCK_NAME, OutputLocked, output_lock
from lumos.schemas import images as cols


def _bytes(im, fmt, **kw):
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


def _sha(data):
    return hashlib.sha256(data).hexdigest()


def _run(reader, out, min_size):
    stats = run_dump_job(reader, str(out), PrepareConfig(min_size=min_size, image_size=512), ScoreConfig(model="tiny"),
                         {"input": "fixture"}, say=lambda *_: None)
    ds = lance.dataset(str(out / "images.lance"))
    rows = ds.to_table(columns=[c for c in cols.IMAGES_SCHEMA.names if c != cols.IMAGE]).to_pylist()
    blobs = ds.take_blobs(cols.IMAGE, indices=list(range(len(rows))))
    images = {r[cols.KEY]: Image.open(io.BytesIO(b.read())) for r, b in zip(rows, blobs)}
    assert stats["rows"] == stats["kept"] + sum(stats["dropped"].values())
    assert len({r[cols.ID] for r in rows}) == len(rows) == stats["kept"]  # one key, one row
    assert all(r[cols.AESTHETIC] is not None for r in rows)
    assert not (out / LOCK_NAME).exists()  # the run's lock is released
    return stats, {r[cols.KEY]: r for r in rows}, images


def test_sam_repeated_keys_truncated_tar_and_broken_sidecars(tmp_path, ray_session):
    src = tmp_path / "sa1b"
    (src / "mirror").mkdir(parents=True)
    good = {n: jpeg(640, 512, n) for n in (1, 2, 3, 9, 10, 11, 12, 13)}
    conflicting = jpeg(640, 512, 33)  # sa_3.jpg again, other bytes
    sidecars = {  # each breaks its row, not the job
        4: b'{"image": {"width": 1e999, "height": 512}}',
        5: b"[" * 100_000 + b"]" * 100_000,
        6: b'{"image": {"width": "abc", "height": 512}}',
        7: b'{"image": {"width": 12.5, "height": 512}}',
        8: b'{"image": {"width": ' + b"7" * 5000 + b', "height": 512}}',
    }
    with tarfile.open(src / "sa_000000.tar", "w") as tar:
        for folder in ("a", "b"):  # the same name in two folders of one tar
            add(tar, f"{folder}/sa_1.jpg", good[1])
            add(tar, f"{folder}/sa_1.json", sidecar(640, 512))
        for n in (2, 3):
            add(tar, f"sa_{n}.jpg", good[n])
            add(tar, f"sa_{n}.json", sidecar(640, 512))
        for n, broken in sidecars.items():
            add(tar, f"sa_{n}.jpg", jpeg(640, 512, n))
            add(tar, f"sa_{n}.json", broken)
    shutil.copy(src / "sa_000000.tar", src / "mirror" / "sa_000000.tar")  # a copied tar: sorts first, wins
    with tarfile.open(src / "sa_000001.tar", "w") as tar:
        for name, data in [("sa_3.jpg", conflicting), ("sa_3.json", sidecar(640, 512)), ("sa_9.jpg", good[9]),
                           ("sa_9.json", sidecar(640, 512)), ("sa_10.jpg", good[10]),
                           ("sa_10.json", sidecar(640, 512)), ("sa_\udcff.jpg", good[9]),
                           ("sa_\udcff.json", sidecar(640, 512))]:
            add(tar, name, data)
    with tarfile.open(tmp_path / "whole.tar", "w") as tar:
        for n in (11, 12, 13):
            add(tar, f"sa_{n}.jpg", good[n])
            add(tar, f"sa_{n}.json", sidecar(640, 512))
    whole = (tmp_path / "whole.tar").read_bytes()
    with tarfile.open(tmp_path / "whole.tar") as tar:
        cut = tar.getmember("sa_13.jpg").offset_data + 1000  # in the middle of the last image
    (src / "sa_000002.tar").write_bytes(whole[:cut])
    (src / "sa_000003.tar").write_bytes(b"this is not a tar\n" * 100)

    texts = pa.array([b"a street", b"not \xff UTF-8"], pa.binary())  # parquet does not check UTF-8 on read
    pq.write_table(pa.table({"file_name": ["sa_2.jpg", "sa_10.jpg"],
                             "caption": pa.Array.from_buffers(pa.string(), 2, texts.buffers())}),
                   tmp_path / "captions.parquet")
    stats, kept, images = _run(SamReader(str(src), captions=str(tmp_path / "captions.parquet")), tmp_path / "out",
                               min_size=512)

    assert set(kept) == {"sa_1.jpg", "sa_2.jpg", "sa_3.jpg", "sa_9.jpg", "sa_11.jpg", "sa_12.jpg"}
    # sa_1: 4 copies (2 tars x 2 folders); sa_2..sa_8: 2 copies each; sa_3 once more with other bytes.
    assert stats["dropped"] == {"duplicate_key": 3 + 1 + 1 + 5, "duplicate_key_conflict": 1, "bad_annotation": 5,
                                "bad_key": 1, "bad_caption": 1, "unreadable_archive": 2}
    assert stats["rows"] == 6 + 10 + 1 + 5 + 1 + 1 + 2
    assert kept["sa_2.jpg"][cols.CAPTION] == "a street"
    for key, row in kept.items():  # the kept copy is the first one: for sa_3, not the conflicting bytes
        assert row[cols.SHA256] == _sha(good[int(key[3:-4])])
        assert (row[cols.WIDTH], row[cols.HEIGHT]) == images[key].size == (640, 512)
    unreadable = {os.path.basename(item["path"]): item["error"] for item in stats["unreadable_archives"]}
    assert set(unreadable) == {"sa_000002.tar", "sa_000003.tar"}
    assert "sa_13.jpg is cut off" in unreadable["sa_000002.tar"] and "\n" not in unreadable["sa_000002.tar"]
    assert unreadable["sa_000003.tar"].startswith("ReadError")


def test_journeydb_repeats_bad_lines_escaping_paths_and_pixels(tmp_path, ray_session):
    src, outside = tmp_path / "jdb", tmp_path / "outside"
    (src / "000").mkdir(parents=True)
    outside.mkdir()
    secret = jpeg(600, 600, 7)
    (outside / "secret.jpg").write_bytes(secret)
    os.symlink(outside / "secret.jpg", src / "000" / "link.jpg")
    files = {"a.jpg": jpeg(640, 640, 1)}

    portrait = Image.new("RGB", (800, 600), (0, 128, 0))  # stored landscape, shown portrait (orientation 6)
    portrait.paste((255, 0, 0), (0, 0, 100, 100))  # stored top-left: shown top-right
    exif = Image.Exif()
    exif[0x0112] = 6
    files["exif.jpg"] = _bytes(portrait, "JPEG", exif=exif.tobytes())
    files["gray16.png"] = _bytes(Image.fromarray(np.full((600, 600), 32768, np.uint16)), "PNG")
    files["float01.tif"] = _bytes(Image.fromarray(np.full((600, 600), 0.5, np.float32)), "TIFF")
    ramp = np.tile(np.linspace(-1000, 3000, 600, dtype=np.float32), (600, 1))
    files["float_ramp.tif"] = _bytes(Image.fromarray(ramp), "TIFF")
    files["wide.png"] = _bytes(Image.new("L", (70_000, 600), 128), "PNG")  # resized: 59733 x 512 fits a JPEG
    files["extreme.png"] = _bytes(Image.new("L", (66_000, 300), 90), "PNG")  # not resized: 66000 > 65535
    palette = Image.new("P", (600, 600), 0)
    palette.putpalette([0, 0, 255, 255, 0, 0] + [0] * 762)
    palette.paste(1, (300, 0, 600, 600))  # the right half: index 1, transparent
    files["palette.png"] = _bytes(palette, "PNG", transparency=1)
    for name, data in files.items():
        (src / "000" / name).write_bytes(data)
    with tarfile.open(src / "001.tgz", "w:gz") as tar:
        add(tar, "001/c.jpg", jpeg(512, 768, 3))
    (src / "002.tgz").write_bytes(b"not gzip at all" * 50)

    def line(path, prompt="a prompt", **extra):
        return json.dumps({"img_path": path, "prompt": prompt, **extra}).encode()

    lines = [
        line("./000/a.jpg", "a castle", Task2={"Caption": "A castle."}),
        line("./000/a.jpg", "a castle", Task2={"Caption": "A castle."}),  # repeated: duplicate_key
        line("000/a.jpg", "another castle"),  # the same key, another annotation: duplicate_key_conflict
        line("./000/b.jpg", 5),  # a number where text belongs
        line("./000/b.jpg", {"text": "x"}),
        b"this is not json",
        b'{"img_path": "./000/b.jpg", "prompt": "\xff\xfe"}',  # not UTF-8
        line("./000/../../outside/secret.jpg"),
        line(str(outside / "secret.jpg")),
        line("./000/link.jpg"),  # a symlink out of --input
        line("./001/c.jpg", "a forest"),
        line("./002/d.jpg", "in an archive that is not gzip"),
    ] + [line(f"./000/{name}", name) for name in files if name != "a.jpg"]
    annotations = tmp_path / "train_anno.jsonl"
    annotations.write_bytes(b"\n".join(lines) + b"\n")

    stats, kept, images = _run(JourneyDBReader(str(src), str(annotations)), tmp_path / "out", min_size=256)

    expected = {"000/a.jpg", "001/c.jpg"} | {f"000/{n}" for n in files if n not in ("a.jpg", "extreme.png")}
    assert set(kept) == expected
    assert stats["dropped"] == {"duplicate_key": 1, "duplicate_key_conflict": 1, "bad_annotation": 4,
                                "outside_input": 3, "missing_image": 1, "unreadable_archive": 1,
                                "extreme_aspect": 1}
    assert stats["rows"] == len(expected) + 12
    assert _sha(secret) not in {r[cols.SHA256] for r in kept.values()}
    assert [os.path.basename(item["path"]) for item in stats["unreadable_archives"]] == ["002.tgz"]
    assert (kept["000/a.jpg"][cols.CAPTION], kept["000/a.jpg"][cols.LONG_CAPTION]) == ("a castle", "A castle.")
    for name, data in files.items():  # each kept row is its own file's
        assert f"000/{name}" not in kept or kept[f"000/{name}"][cols.SHA256] == _sha(data)

    def pixel(key, xy):
        return images[key].convert("RGB").getpixel(xy)

    exif_row = kept["000/exif.jpg"]  # as a viewer shows it: portrait, the red corner at the top right
    assert (exif_row[cols.ORIGINAL_WIDTH], exif_row[cols.ORIGINAL_HEIGHT]) == (600, 800)
    assert images["000/exif.jpg"].size == (512, 683)
    r, g, b = pixel("000/exif.jpg", (505, 5))
    assert r > 200 and g < 60 and b < 60
    assert pixel("000/exif.jpg", (5, 5))[0] < 60
    assert all(abs(v - 128) <= 3 for v in pixel("000/gray16.png", (300, 300)))  # mid-gray stays mid-gray
    assert all(abs(v - 128) <= 3 for v in pixel("000/float01.tif", (300, 300)))  # 0.5 of [0, 1]
    assert max(pixel("000/float_ramp.tif", (2, 300))) < 10 and min(pixel("000/float_ramp.tif", (509, 300))) > 245
    wide = kept["000/wide.png"]
    assert (wide[cols.ORIGINAL_WIDTH], wide[cols.ORIGINAL_HEIGHT]) == (70_000, 600)
    assert (wide[cols.WIDTH], wide[cols.HEIGHT]) == images["000/wide.png"].size == (59_733, 512)
    blue, white = pixel("000/palette.png", (10, 300)), pixel("000/palette.png", (500, 300))
    assert blue[2] > 240 and max(blue[:2]) < 15 and min(white) > 245  # transparency composited on white


def test_imagenet_symlink_out_of_input_is_refused(tmp_path):
    src, outside = tmp_path / "imagenet" / "train" / "n01440764", tmp_path / "outside"
    src.mkdir(parents=True)
    outside.mkdir()
    (src / "x1.JPEG").write_bytes(jpeg(300, 300, 1))
    (outside / "secret.JPEG").write_bytes(jpeg(300, 300, 2))
    os.symlink(outside / "secret.JPEG", src / "x2.JPEG")
    reader = ImageNetReader(str(tmp_path / "imagenet"))
    reader, units = reader.plan(reader.units(), str(tmp_path / "work"))
    raws = {r.key: r for unit in units for r in reader.read(unit)}
    assert raws["train/n01440764/x1.JPEG"].reason is None and raws["train/n01440764/x1.JPEG"].data
    assert raws["train/n01440764/x2.JPEG"].reason == "outside_input" and raws["train/n01440764/x2.JPEG"].data is None


def test_a_second_writer_is_refused_before_anything_is_written(tmp_path):
    src = tmp_path / "sa1b"
    src.mkdir()
    with tarfile.open(src / "sa_000000.tar", "w") as tar:
        add(tar, "sa_1.jpg", jpeg(640, 512, 1))
    out = tmp_path / "out"
    with output_lock(str(out), "lumos-curate sam (another run)"):
        with pytest.raises(OutputLocked, match="in use by another process"):
            run_dump_job(SamReader(str(src)), str(out), PrepareConfig(), None, {}, say=lambda *_: None)
        assert os.listdir(out) == [LOCK_NAME]
