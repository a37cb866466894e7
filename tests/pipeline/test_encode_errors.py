"""`lumos-encode` refuses what it cannot do in one line, exit code 2, before writing anything."""

import os
import subprocess
import sys
import time

import lance
import pytest
from test_encode_resume import _images

from lumos.floor.errors import UserError
from lumos.pipeline.encode_job import EncoderConfig, run_encode
from lumos.schemas import features


def _encode(*args, env=None):
    result = subprocess.run([sys.executable, "-m", "lumos.pipeline.cli", *args], capture_output=True, text=True,
                            timeout=300, env={**os.environ, **(env or {})})
    return result.returncode, [line for line in result.stderr.splitlines() if line.strip()]


def test_unknown_encoder_and_missing_input(tmp_path):
    code, lines = _encode("--encoder", "dino-xxl", "--input", str(tmp_path / "x.lance"), "--output", str(tmp_path / "f"))
    assert code == 2 and len(lines) == 1 and "unknown encoder 'dino-xxl'" in lines[0]
    code, lines = _encode("--encoder", "tiny-vae", "--input", str(tmp_path / "x.lance"), "--output", str(tmp_path / "f"))
    assert code == 2 and len(lines) == 1 and "is not a Lance table" in lines[0]
    assert not (tmp_path / "f").exists()


def test_missing_real_weights_name_them_and_never_fall_back(tmp_path):
    images = _images(str(tmp_path / "images.lance"), count=4)
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    code, lines = _encode("--encoder", "dino-b", "--input", images, "--output", str(tmp_path / "f"), env=env)
    assert code == 2 and len(lines) == 1, lines
    assert "cannot load the weights of the image encoder dino-b" in lines[0] and "--weights PATH" in lines[0]
    code, lines = _encode("--encoder", "sd-vae", "--input", images, "--output", str(tmp_path / "f"), env=env)
    assert code == 2 and len(lines) == 1 and "stabilityai/sd-vae-ft-mse" in lines[0], lines
    assert not (tmp_path / "f").exists()


def test_device_cuda_without_a_gpu_fails_at_once_in_one_line(tmp_path):
    """Ray would wait forever for a node with {GPU: 1}; the command says so in one line and stops. The stage
    runner refuses a GPU placement on a GPU-less cluster the same way, whoever asks."""
    images = _images(str(tmp_path / "images.lance"), count=2)
    started = time.monotonic()
    code, lines = _encode("--encoder", "tiny-vae", "--resolution", "64", "--input", images,
                          "--output", str(tmp_path / "f.lance"), "--device", "cuda", env={"CUDA_VISIBLE_DEVICES": ""})
    assert code == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: --device cuda: the Ray cluster has no GPU"), lines
    assert time.monotonic() - started < 120  # Ray's start-up included; the hang it replaces had no end


def test_a_gpu_stage_on_a_cluster_without_gpus_is_refused(ray_session):
    import ray

    from lumos.floor.stages import Placement, Stage, run_stage

    class Noop(Stage):
        def __call__(self, batch):
            return batch

    with pytest.raises(UserError, match=r"Noop \(1 GPU a worker\): the Ray cluster has no GPU"):
        run_stage(ray.data.range(4), Noop(), Placement(batch_size=2, actors=1, num_gpus=1))


def test_features_made_differently_are_refused(tmp_path, ray_session):
    images = _images(str(tmp_path / "images.lance"), count=4)
    out = str(tmp_path / "f.lance")
    run_encode(images, out, [EncoderConfig("tiny-dino", resolution=64)], say=lambda *_: None)
    with pytest.raises(UserError, match="already holds tiny-dino features made differently .*resolution"):
        run_encode(images, out, [EncoderConfig("tiny-dino", resolution=128)], say=lambda *_: None)


def test_one_table_holds_the_same_vae_at_several_resolutions_and_bucketings(tmp_path, ray_session):
    images = _images(str(tmp_path / "images.lance"), count=4)
    out = str(tmp_path / "f.lance")
    configs = [EncoderConfig("tiny-vae"), EncoderConfig("tiny-vae", resolution=64),
               EncoderConfig("tiny-vae", resolution=256, buckets="pixart")]
    for config in configs:  # one command each, into the same table: nothing refused, nothing overwritten
        run_encode(images, out, [config], say=lambda *_: None)
    schema = lance.dataset(out).schema
    assert [c.stored_name for c in configs] == ["tiny-vae", "tiny-vae-64", "tiny-vae-256-pixart"]
    assert [features.shape_of(schema.field(f"{p}_mean")) for p in ("tiny_vae", "tiny_vae_64", "tiny_vae_256_pixart")] \
        == [(4, 32, 32), (4, 8, 8), (4, -1, -1)]
    assert lance.dataset(out).count_rows(filter="tiny_vae_ok AND tiny_vae_64_ok AND tiny_vae_256_pixart_ok") == 4
    with pytest.raises(UserError, match="--buckets pixart: PixArt has bins for 256, 512 and 1024 px, not 64"):
        EncoderConfig("tiny-vae", resolution=64, buckets="pixart").build()
    with pytest.raises(UserError, match="--buckets pixart: tiny-dino is no latent encoder"):
        EncoderConfig("tiny-dino", buckets="pixart").build()


@pytest.mark.parametrize("args, fragment", [
    (["--batch-size", "0"], "--batch-size 0: must be a number >= 1"),
    (["--resolution", "0"], "--resolution 0: must be a number >= 1"),
    (["--resolution", "100"], "--resolution 100: must be a multiple of 8"),
    (["--gpus-per-actor", "-1"], "--gpus-per-actor -1.0: must be in (0, 8]"),
    (["--gpus-per-actor", "0"], "--gpus-per-actor 0.0"),
])
def test_impossible_option_values_fail_in_one_line_before_anything_is_written(tmp_path, args, fragment):
    """In process, through the command's own error handling; the images table is valid, only the option is not."""
    from typer.testing import CliRunner

    from lumos.pipeline.cli import app

    images = _images(str(tmp_path / "images.lance"), count=2)
    result = CliRunner().invoke(app, ["--encoder", "tiny-vae", "--input", images, "--output",
                                      str(tmp_path / "f.lance"), *args])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, (result.exit_code, result.output)
    assert lines[0].startswith("error: ") and fragment in lines[0], lines[0]
    assert not (tmp_path / "f.lance").exists()
