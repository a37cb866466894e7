import os

import pytest

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("LANCE_LOG", "error")
os.environ.pop("RAY_ADDRESS", None)  # tests always run on their own embedded Ray


@pytest.fixture(scope="session")
def ray_session():
    """One embedded Ray for the whole test session (starting it costs seconds on 2 cores)."""
    import ray

    from lumos.floor.ray_runtime import init_ray

    init_ray(num_cpus=2)
    yield
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_bucket():
    """A local S3 (moto on 127.0.0.1) with the bucket s3://lumos-test, and AWS_* set for the whole session so
    that pyarrow, Lance, subprocesses and Ray workers reach it; yields tests/objectstore.py's S3Server (.uri,
    .env). Tests share the bucket: each writes under a prefix of its own."""
    from objectstore import s3_server

    with s3_server() as server:
        yield server


@pytest.fixture(scope="session", autouse=True)
def _s3_before_ray(request):
    """When any collected test uses `s3_bucket`, start it before anything else, so before the session's Ray:
    Ray workers copy the environment Ray started with, and the AWS_* variables must be in it. Costs nothing
    in a session without such a test."""
    if any("s3_bucket" in getattr(item, "fixturenames", ()) for item in request.session.items):
        request.getfixturevalue("s3_bucket")


# A features table made the product's way (`lumos-curate journeydb` → `lumos-encode` with the tiny encoders),
# and short runs on it: shared by the trainer's and generation's tests.
@pytest.fixture(scope="session")
def feature_table(tmp_path_factory, ray_session):
    from train_cases import make_images

    from lumos.pipeline.encode_job import EncoderConfig, run_encode

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
    run_training(TrainConfig.of(mode="i2i", data=feature_table, output=str(root / "i2i"), steps=150, **tiny),
                 say=lambda *_: None)
    run_training(TrainConfig.of(mode="t2i", data=feature_table, output=str(root / "t2i"), steps=50,
                             init=str(root / "i2i"), **tiny), say=lambda *_: None)
    return {"i2i": str(root / "i2i"), "t2i": str(root / "t2i"), "images": str(root)}
