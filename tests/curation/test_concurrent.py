"""Two processes, one output: the real `lumos-curate laion` and `lumos-encode` commands started on the same
--output while the first runs. The second fails at once in one line naming the first (pid and host); the
first finishes with the result a run alone gives."""

import json
import os
import socket
import subprocess
import sys
import time
from collections import Counter

import lance
import pyarrow as pa
from web_cases import CASES, case_url, write_metadata

from lumos.curation.sample import encode, synthetic_image
from lumos.floor.output_lock import LOCK_NAME
from lumos.schemas import features
from lumos.schemas import images as cols

# Kept rows, filter drops and download failures, none of which depends on an option the two runs leave default.
CURATE_CASES = [c for c in CASES if c.name in ("at_bounds", "big", "no_caption", "gray", "rgba", "narrow",
                                                "aesthetic_past", "gone", "html", "shrunk", "big_again", "no_url")]

def _start_while_first_holds(cmd, output):
    """Start `cmd`, wait until it holds the output's lock, then run `cmd` again to its end; (first, second)."""
    first = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lock, deadline = os.path.join(output, LOCK_NAME), time.monotonic() + 120
    while not os.path.exists(lock) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert os.path.exists(lock), first.communicate()
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    out, err = first.communicate(timeout=300)
    return subprocess.CompletedProcess(cmd, first.returncode, out, err), first.pid, second


def _refused(second, first_pid, command):
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert second.returncode == 2, second.stderr[-3000:]
    assert len(lines) == 1 and lines[0].startswith("error: output "), lines
    assert f"{command} (pid {first_pid} on {socket.gethostname()}" in lines[0], lines


def test_two_curate_runs_on_one_output(tmp_path, served):
    metadata = write_metadata(str(tmp_path / "meta.parquet"), "laion-upper", served.base_url, CURATE_CASES)
    out = str(tmp_path / "out")
    cmd = [sys.executable, "-m", "lumos.curation.cli", "laion", "--input", metadata, "--output", out,
           "--workers", "1", "--threads", "8", "--shard-size", "8", "--allow-private-urls"]
    first, first_pid, second = _start_while_first_holds(cmd, out)
    assert first.returncode == 0, first.stderr[-3000:]
    _refused(second, first_pid, "lumos-curate laion")

    with open(os.path.join(out, "stats.json")) as f:  # exactly what one run alone gives
        stats = json.load(f)
    expected = Counter(c.expect for c in CURATE_CASES if c.expect is not None)
    assert (stats["rows"], stats["kept"], stats["dropped"]) == (len(CURATE_CASES), 5, dict(expected))
    ds = lance.dataset(os.path.join(out, "images.lance"))
    table = ds.to_table(columns=[cols.ID, cols.KEY])
    assert sorted(table[cols.KEY].to_pylist()) == sorted(case_url(served.base_url, c) for c in CURATE_CASES
                                                         if c.expect is None)
    assert len(set(table[cols.ID].to_pylist())) == table.num_rows
    assert cols.has_unique_ids(ds.schema)  # the marker lumos-encode trusts
    assert LOCK_NAME not in os.listdir(out)  # released at the end


def _images(path, count=16, per_fragment=4):
    rows = [{cols.ID: f"id{i:03d}", cols.SOURCE: "test", cols.KEY: f"k{i}", cols.ORIGINAL_WIDTH: 96,
             cols.ORIGINAL_HEIGHT: 80, cols.WIDTH: 96, cols.HEIGHT: 80, cols.SHA256: f"s{i}", cols.CAPTION: f"c {i}",
             cols.IMAGE: encode(synthetic_image(96, 80, seed=i))} for i in range(count)]
    schema = cols.images_schema({"job": {"source": "test"}}, unique_ids=True)  # as lumos-curate writes it
    lance.write_dataset(pa.Table.from_pylist(rows, schema=schema), path, schema=schema, max_rows_per_file=per_fragment)
    return path


def test_two_encode_runs_on_one_output(tmp_path):
    images = _images(str(tmp_path / "images.lance"))
    out = str(tmp_path / "features.lance")
    cmd = [sys.executable, "-m", "lumos.pipeline.cli", "--encoder", "tiny-vae", "--input", images, "--output", out,
           "--batch-size", "4"]
    first, first_pid, second = _start_while_first_holds(cmd, out)
    assert first.returncode == 0, first.stderr[-3000:]
    _refused(second, first_pid, "lumos-encode")

    table = lance.dataset(out).to_table().sort_by(cols.ID)
    assert table[cols.ID].to_pylist() == [f"id{i:03d}" for i in range(16)]  # every id once
    for name in (features.mean_column("tiny-vae"), features.std_column("tiny-vae")):
        assert table[name].null_count == 0
    with open(out[: -len(".lance")] + ".stats.json") as f:
        stats = json.load(f)["tiny-vae"]
    assert (stats["rows"], stats["encoded_now"], stats["failed_to_decode"]) == (16, 16, 0)
    assert LOCK_NAME not in os.listdir(out) and not os.path.exists(os.path.join(out, "_staging", "tiny_vae.lance"))
