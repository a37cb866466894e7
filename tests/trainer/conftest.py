"""A features table made the product's way: `lumos-curate journeydb` → `lumos-encode` with the tiny encoders."""

import pytest
from train_cases import make_images

from lumos.pipeline.encode_job import EncoderConfig, run_encode


@pytest.fixture(scope="session")
def feature_table(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("train")
    images = make_images(root)
    out = str(root / "features.lance")
    run_encode(images, out, [EncoderConfig("tiny-vae"), EncoderConfig("tiny-dino"), EncoderConfig("tiny-t5")],
               say=lambda *_: None)
    return out


@pytest.fixture(scope="session")
def sample_runs(feature_table, tmp_path_factory):
    """A short I2I run on the tiny features and a T2I run from it: what the samplers and exports read."""
    from lumos.trainer.train import TrainConfig, run_training

    root = tmp_path_factory.mktemp("runs")
    tiny = dict(model="DiT-T/2", latents="tiny-vae", condition="tiny-dino", text="tiny-t5", precision="fp32",
                batch_size=8, lr=1e-3, warmup=5, workers=0, ema=0.9)
    run_training(TrainConfig(mode="i2i", data=feature_table, output=str(root / "i2i"), steps=150, **tiny),
                 say=lambda *_: None)
    run_training(TrainConfig(mode="t2i", data=feature_table, output=str(root / "t2i"), steps=50,
                             init=str(root / "i2i"), **tiny), say=lambda *_: None)
    return {"i2i": str(root / "i2i"), "t2i": str(root / "t2i"), "images": str(root)}
