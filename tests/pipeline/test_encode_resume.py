"""A `lumos-encode` run killed (SIGKILL, whole process group) after some shards were committed, then run
again, gives the same features as an uninterrupted run, with no id twice; the re-run takes over the lock the
killed run left."""

import json
import os
import signal
import subprocess
import sys
import time

import lance
import pyarrow as pa

from lumos.curation.sample import encode, synthetic_image
from lumos.floor.output_lock import LOCK_NAME
from lumos.pipeline.encode_job import EncoderConfig, run_encode
from lumos.schemas import features
from lumos.schemas import images as cols


def _images(path, count=48, per_fragment=4, corrupt=()):
    rows = [{cols.ID: f"id{i:03d}", cols.SOURCE: "test", cols.KEY: f"k{i}", cols.ORIGINAL_WIDTH: 96,
             cols.ORIGINAL_HEIGHT: 80, cols.WIDTH: 96, cols.HEIGHT: 80, cols.SHA256: f"s{i}", cols.CAPTION: f"c {i}",
             cols.IMAGE: b"\xff\xd8 not a jpeg" if i in corrupt else encode(synthetic_image(96, 80, seed=i))}
            for i in range(count)]
    schema = cols.images_schema({"job": {"source": "test"}}, unique_ids=True)  # as lumos-curate writes it
    lance.write_dataset(pa.Table.from_pylist(rows, schema=schema), path, schema=schema,
                        max_rows_per_file=per_fragment)  # 12 fragments: 12 shards
    return path


def _table(path):
    return lance.dataset(path).to_table().sort_by(cols.ID)


def test_killed_encode_resumes_to_the_same_table(tmp_path, ray_session):
    images = _images(str(tmp_path / "images.lance"))
    assert len(lance.dataset(images).get_fragments()) == 12
    out = str(tmp_path / "killed.lance")
    staging = os.path.join(out, "_staging", "tiny_vae.lance")
    cmd = [sys.executable, "-m", "lumos.pipeline.cli", "--encoder", "tiny-vae", "--input", images,
           "--output", out, "--batch-size", "2"]
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, committed = time.monotonic() + 240, 0
    while time.monotonic() < deadline and proc.poll() is None:
        if os.path.isdir(os.path.join(staging, "_versions")):
            committed = len(os.listdir(os.path.join(staging, "_versions")))
            if committed >= 2:
                break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= committed and not os.path.exists(os.path.join(out, "_versions"))
    with open(os.path.join(out, LOCK_NAME)) as f:
        assert json.load(f)["pid"] == proc.pid  # the killed run's lock is left behind
    time.sleep(1)

    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "shards already done" in resumed.stderr
    assert not os.path.exists(os.path.join(out, LOCK_NAME))  # taken over, then released
    assert os.path.exists(os.path.join(out, LOCK_NAME + ".takeover"))

    reference = str(tmp_path / "reference.lance")
    run_encode(images, reference, [EncoderConfig("tiny-vae")], batch_size=2, say=lambda *_: None)
    got, want = _table(out), _table(reference)
    assert got[cols.ID].to_pylist() == [f"id{i:03d}" for i in range(48)]  # every id once
    for name in (features.mean_column("tiny-vae"), features.std_column("tiny-vae")):
        assert got[name].equals(want[name])
    assert not os.path.exists(staging)
