"""`lumos-encode` against an external Ray cluster (a head and a second node started with `ray start` on
127.0.0.1, joined through RAY_ADDRESS) writes the same table as the embedded run."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import lance
from test_encode_resume import _images

from lumos.pipeline.encode_job import EncoderConfig, run_encode
from lumos.schemas import features
from lumos.schemas import images as cols

RAY = os.path.join(os.path.dirname(sys.executable), "ray")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args, temp_dir):
    """`ray start ... --block` in its own process group, so that the test stops exactly this node."""
    log = open(os.path.join(temp_dir, f"node-{len(os.listdir(temp_dir))}.log"), "w")
    return subprocess.Popen([RAY, "start", "--block", "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                             "--object-store-memory", str(200 * 1024 * 1024), "--disable-usage-stats", *args],
                            start_new_session=True, stdout=log, stderr=subprocess.STDOUT)


def _alive_nodes(address: str, env: dict) -> int:
    code = ("import ray; ray.init(address='%s', logging_level='ERROR'); "
            "print(sum(n['Alive'] for n in ray.nodes()))" % address)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    return int(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 and out.stdout.strip() else 0


def test_external_cluster_gives_the_same_table(tmp_path, ray_session):
    images = _images(str(tmp_path / "images.lance"), count=24, per_fragment=4)
    temp_dir = tempfile.mkdtemp(prefix="lr", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    nodes = [_start(["--head", "--port", str(port), "--include-dashboard", "false", "--temp-dir", temp_dir], temp_dir)]
    try:
        deadline = time.monotonic() + 120
        while _alive_nodes(address, env) < 1 and time.monotonic() < deadline:
            time.sleep(1)
        nodes.append(_start(["--address", address], temp_dir))
        while _alive_nodes(address, env) < 2 and time.monotonic() < deadline:
            time.sleep(1)
        assert _alive_nodes(address, env) == 2, "the two-node cluster did not come up"

        out = str(tmp_path / "cluster.lance")
        run = subprocess.run([sys.executable, "-m", "lumos.pipeline.cli", "--encoder", "tiny-vae", "--encoder",
                              "tiny-t5", "--input", images, "--output", out, "--batch-size", "4"],
                             capture_output=True, text=True, timeout=400, env={**env, "RAY_ADDRESS": address})
        assert run.returncode == 0, run.stderr[-3000:]
        assert "2 nodes" in run.stderr  # it joined the cluster, not an embedded Ray
    finally:
        for node in reversed(nodes):
            os.killpg(node.pid, signal.SIGTERM)
        for node in nodes:
            try:
                node.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(node.pid, signal.SIGKILL)
        shutil.rmtree(temp_dir, ignore_errors=True)

    embedded = str(tmp_path / "embedded.lance")
    run_encode(images, embedded, [EncoderConfig("tiny-vae"), EncoderConfig("tiny-t5")], batch_size=4,
               say=lambda *_: None)
    got, want = (lance.dataset(p).to_table().sort_by(cols.ID) for p in (out, embedded))
    assert got[cols.ID].to_pylist() == [f"id{i:03d}" for i in range(24)]
    names = [features.mean_column("tiny-vae"), features.std_column("tiny-vae"), features.tokens_column("tiny-t5"),
             features.len_column("tiny-t5")]
    assert got.select([cols.ID, *names]).equals(want.select([cols.ID, *names]))
