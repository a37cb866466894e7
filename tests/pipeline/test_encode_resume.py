"""A `lumos-encode` run killed (SIGKILL, whole process group) after some fragments were committed, then run
again, encodes only the other fragments and gives the same features as an uninterrupted run, with no id twice;
the re-run takes over the lock the killed run left and cleans what the killed run left uncommitted."""

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
from lumos.pipeline.feature_layout import READING_TAG
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


def _done(out: str) -> int:
    """Fragments of the features table that hold tiny-vae's columns (committed by the run)."""
    from lumos.pipeline.feature_layout import missing_fragments

    try:
        ds = lance.dataset(out)
        if features.ok_column("tiny-vae") not in ds.schema.names:
            return 0
        return len(ds.get_fragments()) - len(missing_fragments(ds, features.ok_column("tiny-vae")))
    except (ValueError, OSError):
        return 0


def test_killed_encode_resumes_to_the_same_table(tmp_path, ray_session):
    images = _images(str(tmp_path / "images.lance"))
    assert len(lance.dataset(images).get_fragments()) == 12
    out = str(tmp_path / "killed.lance")
    cmd = [sys.executable, "-m", "lumos.pipeline.cli", "--encoder", "tiny-vae", "--input", images,
           "--output", out, "--batch-size", "2", "--commit-every", "0.001"]  # a commit per finished fragment
    proc = subprocess.Popen(cmd, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and _done(out) < 2:
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = _done(out)
    assert 2 <= done < 12
    with open(os.path.join(out, LOCK_NAME)) as f:
        assert json.load(f)["pid"] == proc.pid  # the killed run's lock is left behind
    time.sleep(1)

    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"tiny-vae: {4 * (12 - done)} rows in {12 - done} fragments to encode" in resumed.stderr
    assert not os.path.exists(os.path.join(out, LOCK_NAME))  # taken over, then released
    assert os.path.exists(os.path.join(out, LOCK_NAME + ".takeover"))

    reference = str(tmp_path / "reference.lance")
    run_encode(images, reference, [EncoderConfig("tiny-vae")], batch_size=2, say=lambda *_: None)
    got, want = _table(out), _table(reference)
    assert got[cols.ID].to_pylist() == [f"id{i:03d}" for i in range(48)]  # every id once
    for name in (features.mean_column("tiny-vae"), features.std_column("tiny-vae")):
        assert got[name].equals(want[name])
    assert not os.path.exists(os.path.join(out, "_staging"))
    # housekeeping: the latest version and the tagged one are left, and every data file is one of theirs
    ds = lance.dataset(out)
    kept = {v["version"] for v in ds.versions()}
    assert kept <= {ds.version, ds.tags.get_version(READING_TAG)} and ds.version in kept
    referenced = {d.path for v in kept for f in lance.dataset(out, version=v).get_fragments() for d in f.metadata.files}
    assert set(os.listdir(os.path.join(out, "data"))) == referenced  # the killed run's unfinished files are gone
