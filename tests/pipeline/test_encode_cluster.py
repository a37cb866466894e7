"""`lumos-encode` against an external Ray cluster (a head and a second node started with `ray start` on
127.0.0.1, joined through RAY_ADDRESS) writes the same table as the embedded run."""

import subprocess
import sys

import lance
from ray_cluster import two_node_cluster
from test_encode_resume import _images

from lumos.pipeline.encode_job import EncoderConfig, run_encode
from lumos.schemas import features
from lumos.schemas import images as cols


def test_external_cluster_gives_the_same_table(tmp_path, ray_session):
    images = _images(str(tmp_path / "images.lance"), count=24, per_fragment=4)
    with two_node_cluster() as (address, env):
        out = str(tmp_path / "cluster.lance")
        run = subprocess.run([sys.executable, "-m", "lumos.pipeline.cli", "--encoder", "tiny-vae", "--encoder",
                              "tiny-t5", "--input", images, "--output", out, "--batch-size", "4"],
                             capture_output=True, text=True, timeout=400, env={**env, "RAY_ADDRESS": address})
        assert run.returncode == 0, run.stderr[-3000:]
        assert "2 nodes" in run.stderr  # it joined the cluster, not an embedded Ray

    embedded = str(tmp_path / "embedded.lance")
    run_encode(images, embedded, [EncoderConfig("tiny-vae"), EncoderConfig("tiny-t5")], batch_size=4,
               say=lambda *_: None)
    got, want = (lance.dataset(p).to_table().sort_by(cols.ID) for p in (out, embedded))
    assert got[cols.ID].to_pylist() == [f"id{i:03d}" for i in range(24)]
    names = [features.mean_column("tiny-vae"), features.std_column("tiny-vae"), features.tokens_column("tiny-t5"),
             features.len_column("tiny-t5")]
    assert got.select([cols.ID, *names]).equals(want.select([cols.ID, *names]))
