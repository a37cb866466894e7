"""One pass for all encoders of a command, and passes that touch only what is new:

- two image encoders in one `lumos-encode` decode each image once (decodes counted in every process of the
  job, Ray workers included, by a sitecustomize hook on PIL's Image.open), where two commands decode twice;
- an images table that grew (rows appended: new fragments) gets only its new fragments encoded, and the
  files of the fragments already there are left as they were.
"""

import os
import subprocess
import sys

import lance
import pyarrow as pa
from test_encode_resume import _images

from lumos.curation.sample import encode, synthetic_image
from lumos.pipeline.encode_job import EncoderConfig, run_encode
from lumos.schemas import features
from lumos.schemas import images as cols

COUNTER = '''
import os
import PIL.Image

_open = PIL.Image.open


def _counted(fp, *args, **kwargs):
    if not isinstance(fp, (str, bytes, os.PathLike)):  # image bytes in memory: what the encode job decodes
        fd = os.open(os.environ["DECODE_LOG"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        os.write(fd, b"1\\n")
        os.close(fd)
    return _open(fp, *args, **kwargs)


PIL.Image.open = _counted
'''


def _encode_counting(tmp_path, images, out, *encoders) -> int:
    """Run `lumos-encode` in a process of its own (its own embedded Ray, whose workers inherit PYTHONPATH and
    so the hook); returns the number of images decoded."""
    hook = tmp_path / "hook"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(COUNTER)
    log = tmp_path / f"decodes-{len(list(tmp_path.glob('decodes-*')))}.log"
    env = {**os.environ, "PYTHONPATH": f"{hook}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "DECODE_LOG": str(log)}
    env.pop("RAY_ADDRESS", None)
    args = [a for e in encoders for a in ("--encoder", e)]
    done = subprocess.run([sys.executable, "-m", "lumos.pipeline.cli", *args, "--input", images, "--output", out,
                           "--resolution", "64", "--batch-size", "4", "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    return len(log.read_text().splitlines()) if log.exists() else 0


def test_two_image_encoders_decode_each_image_once(tmp_path, ray_session):
    images = _images(str(tmp_path / "images.lance"), count=12, per_fragment=4)
    once = _encode_counting(tmp_path, images, str(tmp_path / "one.lance"), "tiny-vae", "tiny-dino")
    assert once == 12  # one decode per image for both encoders
    apart = _encode_counting(tmp_path, images, str(tmp_path / "two.lance"), "tiny-vae")
    assert apart == 12  # the hook counts: a command of one encoder decodes every image, so two commands twice
    run_encode(images, str(tmp_path / "two.lance"), [EncoderConfig("tiny-dino", resolution=64)], batch_size=4,
               say=lambda *_: None)  # the second encoder apart (in process: nothing to count)
    one = lance.dataset(str(tmp_path / "one.lance")).to_table().sort_by(cols.ID)
    two = lance.dataset(str(tmp_path / "two.lance")).to_table().sort_by(cols.ID)
    for name in (features.mean_column("tiny-vae-64"), features.cls_column("tiny-dino")):
        assert one[name].equals(two[name])  # each encoder's own preprocessing from the shared decode


def _append(path, start, count, per_fragment=4):
    rows = [{cols.ID: f"id{i:03d}", cols.SOURCE: "test", cols.KEY: f"k{i}", cols.ORIGINAL_WIDTH: 96,
             cols.ORIGINAL_HEIGHT: 80, cols.WIDTH: 96, cols.HEIGHT: 80, cols.SHA256: f"s{i}", cols.CAPTION: f"c {i}",
             cols.IMAGE: encode(synthetic_image(96, 80, seed=i))} for i in range(start, start + count)]
    schema = cols.images_schema({"job": {"source": "test"}}, unique_ids=True)  # as _images wrote the table
    lance.write_dataset(pa.Table.from_pylist(rows, schema=schema), path, schema=schema, mode="append",
                        max_rows_per_file=per_fragment)


def test_a_grown_images_table_gets_only_its_new_fragments_encoded(tmp_path, ray_session):
    images = _images(str(tmp_path / "images.lance"), count=16, per_fragment=4)
    out = str(tmp_path / "features.lance")
    said = []
    run_encode(images, out, [EncoderConfig("tiny-vae", resolution=64)], batch_size=4, say=said.append)
    before = {f.fragment_id: [(d.path, d.file_size_bytes) for d in f.metadata.files]
              for f in lance.dataset(out).get_fragments()}
    assert len(before) == 4

    _append(images, 16, 8)  # a source appended: two new fragments
    said.clear()
    stats = run_encode(images, out, [EncoderConfig("tiny-vae", resolution=64)], batch_size=4, say=said.append)
    assert "tiny-vae-64: 8 rows in 2 fragments to encode" in said
    assert stats["encoders"]["tiny-vae-64"]["encoded_now"] == 8 and stats["encoders"]["tiny-vae-64"]["rows"] == 24
    ds = lance.dataset(out)
    after = {f.fragment_id: [(d.path, d.file_size_bytes) for d in f.metadata.files] for f in ds.get_fragments()}
    assert {k: after[k] for k in before} == before and len(after) == 6  # old fragments untouched
    table = ds.to_table(columns=[cols.ID, features.ok_column("tiny-vae-64")]).sort_by(cols.ID)
    assert table[cols.ID].to_pylist() == [f"id{i:03d}" for i in range(24)]  # every id once
    assert all(table[features.ok_column("tiny-vae-64")].to_pylist())

    reference = str(tmp_path / "reference.lance")  # the same rows encoded in one go
    run_encode(images, reference, [EncoderConfig("tiny-vae", resolution=64)], batch_size=4, say=lambda *_: None)
    got = ds.to_table().sort_by(cols.ID)
    want = lance.dataset(reference).to_table().sort_by(cols.ID)
    assert got[features.mean_column("tiny-vae-64")].equals(want[features.mean_column("tiny-vae-64")])
