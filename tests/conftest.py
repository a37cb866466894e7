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
