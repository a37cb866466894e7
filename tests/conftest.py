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
