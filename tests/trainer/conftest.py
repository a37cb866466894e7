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
