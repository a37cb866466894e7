"""`lumos-encode` and the trainer on an object store: an images table in a local S3 (moto on 127.0.0.1), the
features table written there (staging parts included), then a short training run that reads it from
`s3://`. The features equal those of the same encode on a local disk, and nothing but the two tables and the
job's stats file is left in the bucket."""

import json

import lance
from test_encode_resume import _images

from lumos.floor import fs
from lumos.pipeline.encode_job import EncoderConfig, run_encode
from lumos.schemas import features
from lumos.schemas import images as cols


def test_encode_then_train_from_s3(s3_bucket, ray_session, tmp_path):
    from lumos.trainer.train import TrainConfig, run_training

    prefix = f"{s3_bucket.uri}/encode-train"
    images = _images(f"{prefix}/images.lance", count=24, per_fragment=4)
    out = f"{prefix}/features.lance"
    encoders = [EncoderConfig("tiny-vae", resolution=64), EncoderConfig("tiny-dino", resolution=64)]
    stats = run_encode(images, out, encoders, batch_size=4, say=lambda *_: None)
    assert stats["encoders"]["tiny-vae-64"]["rows"] == 24

    local = str(tmp_path / "local.lance")
    run_encode(images, local, encoders, batch_size=4, say=lambda *_: None)
    got = lance.dataset(out).to_table().sort_by(cols.ID)
    want = lance.dataset(local).to_table().sort_by(cols.ID)
    names = [features.mean_column("tiny-vae-64"), features.std_column("tiny-vae-64"), features.cls_column("tiny-dino")]
    assert got[cols.ID].equals(want[cols.ID]) and got.num_rows == 24
    for name in names:
        assert got[name].equals(want[name])
    assert json.loads(fs.read_bytes(f"{prefix}/features.stats.json"))["tiny-dino"]["rows"] == 24

    left = [p[len(prefix) + 1:] for p in fs.list_files(prefix)]
    assert left and all(p.startswith(("images.lance/", "features.lance/")) or p == "features.stats.json"
                        for p in left), left
    assert not [p for p in left if "_staging" in p]  # the part files went with their fragments

    run = tmp_path / "run"
    run_training(TrainConfig.of(mode="i2i", data=out, output=str(run), model="DiT-T/2", latents="tiny-vae-64",
                             condition="tiny-dino", precision="fp32", batch_size=8, steps=3, lr=1e-3, warmup=1,
                             workers=0, log_every=1, save_every=3), say=lambda *_: None)
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 3
