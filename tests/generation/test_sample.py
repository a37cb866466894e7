"""`lumos-sample` on a DiT-T/2 run trained on tiny-encoder features: grids of the expected size, the same seed
gives the same bytes, encoders that are not available fail in one line."""

import json
import os
import shutil

import lance
import numpy as np
import pytest
from PIL import Image
from train_cases import ROWS
from typer.testing import CliRunner

from lumos.curation.sample import encode, synthetic_image
from lumos.trainer import checkpoint as ckpt
from lumos.generation.grid import LABEL, PAD, origin
from lumos.generation.sample_cli import app

RESOLUTION = 256  # the tiny-vae features of the fixture
FAST = ["--steps", "4", "--device", "cpu"]


def _images(tmp_path, count=2):
    paths = []
    for i in range(count):
        path = tmp_path / f"in{i}.jpg"
        path.write_bytes(encode(synthetic_image(320 + 40 * i, 290, seed=100 + i)))
        paths.append(str(path))
    return paths


def _sample(*args):
    result = CliRunner().invoke(app, [*args, *FAST])
    assert result.exit_code in (0, 2), result.exception
    return result.exit_code, [line for line in result.output.splitlines() if line.strip()]


def _size(rows, cols, titles=False):
    """A grid's (width, height) as PIL gives it: a header band, then rows (each under a title band)."""
    return (cols * (RESOLUTION + PAD) + PAD, LABEL + rows * (RESOLUTION + PAD + (LABEL if titles else 0)) + PAD)


def _cell(grid, row, col, titles=False):
    top, left = origin(row, col, RESOLUTION, header=True, titles=titles)
    return grid[top:top + RESOLUTION, left:left + RESOLUTION]


def test_i2i_grid_size_and_same_seed_same_bytes(sample_runs, tmp_path):
    a, b = _images(tmp_path)
    runs = []
    for name, seed in (("one.png", 0), ("two.png", 0), ("other.png", 1)):
        code, lines = _sample("i2i", "--checkpoint", sample_runs["i2i"], "--image", a, "--image", b, "--num", "3",
                              "--seed", str(seed), "--output", str(tmp_path / name))
        assert code == 0, lines
        runs.append((tmp_path / name).read_bytes())
    assert Image.open(tmp_path / "one.png").size == _size(2, 4)
    assert runs[0] == runs[1] and runs[0] != runs[2]
    grid = np.asarray(Image.open(tmp_path / "one.png"))
    cells = [_cell(grid, 0, j) for j in range(4)]
    assert all(not np.array_equal(cells[1], c) for c in cells[2:])  # 3 different samples, not one repeated


def test_interpolate_strip_and_t2i_grid(sample_runs, tmp_path):
    a, b = _images(tmp_path)
    strips = []
    for name in ("strip.png", "strip2.png"):
        code, lines = _sample("interpolate", "--checkpoint", sample_runs["i2i"], "--image", a, "--image", b,
                              "--num", "4", "--output", str(tmp_path / name))
        assert code == 0, lines
        strips.append((tmp_path / name).read_bytes())
    assert Image.open(tmp_path / "strip.png").size == _size(1, 6) and strips[0] == strips[1]  # A, 4 points, B
    strip = np.asarray(Image.open(tmp_path / "strip.png"))
    ends = [_cell(strip, 0, k) for k in (1, 4)]
    assert not np.array_equal(*ends)  # one noise, two conditions: the strip moves from A to B
    # the default blend is linear (official Lumos); --mode slerp meets it at the ends only
    code, lines = _sample("interpolate", "--checkpoint", sample_runs["i2i"], "--image", a, "--image", b, "--num", "4",
                          "--mode", "slerp", "--output", str(tmp_path / "slerp.png"))
    assert code == 0, lines
    spherical = np.asarray(Image.open(tmp_path / "slerp.png"))
    def differ(k):
        return int(np.abs(_cell(strip, 0, k).astype(int) - _cell(spherical, 0, k).astype(int)).max())

    assert differ(1) <= 1 and differ(4) <= 1 and differ(2) > 1
    code, lines = _sample("interpolate", "--checkpoint", sample_runs["i2i"], "--image", a, "--image", b,
                          "--mode", "cubic", "--output", str(tmp_path / "x.png"))
    assert code == 2 and len(lines) == 1 and "--mode cubic: expected lerp or slerp" in lines[0], lines
    outputs = []
    for name in ("t1.png", "t2.png"):
        code, lines = _sample("t2i", "--checkpoint", sample_runs["t2i"], "--prompt", "picture 1, picture 1",
                              "--prompt", "a red square", "--num", "2", "--output", str(tmp_path / name))
        assert code == 0, lines
        outputs.append((tmp_path / name).read_bytes())
    assert Image.open(tmp_path / "t1.png").size == _size(2, 2, titles=True) and outputs[0] == outputs[1]
    # any size the VAE (8 px a latent) and the patch (2) divide: here 128 × 384 px
    code, lines = _sample("t2i", "--checkpoint", sample_runs["t2i"], "--prompt", "a red square", "--num", "2",
                          "--height", "128", "--width", "384", "--output", str(tmp_path / "wide.png"))
    assert code == 0, lines
    assert Image.open(tmp_path / "wide.png").size == (2 * (384 + PAD) + PAD, LABEL + 128 + PAD + LABEL + PAD)
    code, lines = _sample("t2i", "--checkpoint", sample_runs["t2i"], "--prompt", "a red square", "--height", "100",
                          "--output", str(tmp_path / "bad.png"))
    assert code == 2 and "--height 100: must be a positive multiple of 16" in lines[-1], lines
    assert not (tmp_path / "bad.png").exists()


def _edited_run(source, tmp_path, edit):
    """A copy of a run whose checkpoint's provenance is edited: a run made elsewhere, with other encoders."""
    run = tmp_path / "edited"
    shutil.copytree(source, run)
    path = ckpt.latest(str(run))
    config = ckpt.read_config(path)
    edit(config["provenance"])
    with open(f"{path}/config.json", "w") as f:
        json.dump(config, f)
    return str(run)


def test_encoders_not_available_fail_in_one_line(sample_runs, tmp_path):
    from lumos.pipeline.encoders import EncoderConfig

    image = _images(tmp_path, 1)[0]
    # features made with dino-b from weights at a path this machine does not have
    made_elsewhere = {k: v for k, v in EncoderConfig("dino-b", weights="/nowhere/dino.pth").build().provenance().items()
                      if k not in ("versions", "images")}
    cases = [(lambda p: p.update(condition=made_elsewhere), "/nowhere/dino.pth"),
             (lambda p: p["condition"].update(encoder="dino-xxl"), "unknown encoder 'dino-xxl'"),
             (lambda p: p["latents"].update(resolution=512), "tiny-vae is built differently here"),
             (lambda p: p["condition"].update(random_weights=True), "built with random weights")]
    for i, (edit, message) in enumerate(cases):
        run = _edited_run(sample_runs["i2i"], tmp_path / f"case{i}", edit)
        code, lines = _sample("i2i", "--checkpoint", run, "--image", image, "--output", str(tmp_path / "x.png"))
        errors = [line for line in lines if not line.startswith(run)]
        assert code == 2 and len(errors) == 1 and message in errors[0], lines
    code, lines = _sample("t2i", "--checkpoint", sample_runs["i2i"], "--prompt", "x", "--output", str(tmp_path / "x.png"))
    assert code == 2 and "is a i2i run; use lumos-sample i2i" in lines[-1], lines
    assert not (tmp_path / "x.png").exists()


def test_lumos_train_sample_every_writes_grids_of_held_back_rows(feature_table, tmp_path):
    from lumos.floor.errors import UserError
    from lumos.generation.train_cli import held_back_grid
    from lumos.trainer.train import TrainConfig, run_training

    run = tmp_path / "run"
    config = dict(mode="i2i", data=feature_table, output=str(run), model="DiT-T/2", latents="tiny-vae",
                  condition="tiny-dino", precision="fp32", batch_size=8, workers=0, steps=10, sample_every=5,
                  sample_rows=2, record_samples=True)
    run_training(TrainConfig.of(**config), say=lambda *_: None, sample_grid=held_back_grid)
    assert sorted(os.listdir(run / "samples")) == ["held-back.json", "step-0000005.png", "step-0000010.png"]
    assert Image.open(run / "samples" / "step-0000010.png").size == _size(2, 5)  # reconstruction + 4 samples
    held = json.loads((run / "samples" / "held-back.json").read_text())["ids"]
    with open(run / "samples-rank0.jsonl") as f:
        trained = {i for line in f for i in json.loads(line)["ids"]}
    assert len(held) == 2 and not set(held) & trained and len(trained) == ROWS - 2
    # lumos-sample on the held-back images (their pixels encoded now, in-process) draws the same samples as the
    # training grid did from the stored features: same condition, same noise, same EMA weights
    images = lance.dataset(os.path.join(os.path.dirname(feature_table), "curated", "images.lance"))
    rows = {r["id"]: r["_rowaddr"] for r in images.to_table(columns=["id"], with_row_address=True).to_pylist()}
    inputs = []
    for k, i in enumerate(held):
        (tmp_path / f"held{k}.jpg").write_bytes(images.take_blobs("image", addresses=[rows[i]])[0].read())
        inputs += ["--image", str(tmp_path / f"held{k}.jpg")]
    result = CliRunner().invoke(app, ["i2i", "--checkpoint", str(run), *inputs, "--num", "4", "--steps", "20",
                                      "--output", str(tmp_path / "again.png"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    ours = np.asarray(Image.open(tmp_path / "again.png"))
    theirs = np.asarray(Image.open(run / "samples" / "step-0000010.png"))
    first_sample = PAD + RESOLUTION + PAD  # the first column differs: the input image vs its VAE reconstruction
    assert not np.array_equal(ours[:LABEL, :first_sample], theirs[:LABEL, :first_sample])  # "input", "recon"
    assert np.array_equal(ours[:, first_sample:], theirs[:, first_sample:])
    with pytest.raises(UserError, match="held-back rows"):  # holding back changes the data order
        run_training(TrainConfig.of(**{**config, "sample_every": 0, "resume": True, "steps": 12}), say=lambda *_: None)


@pytest.mark.parametrize("scheduler,tolerance", [("dpm", 1e-4), ("ddim", 0.06)])
def test_sampler_reaches_the_data_with_the_exact_noise_predictor(scheduler, tolerance):
    """With one data point x*, the exact ε-prediction is (x_t − √ᾱ_t x*) / √(1 − ᾱ_t); the sampler, on the
    training betas, must land on x*. (DDIM stops at t = 0 of 1000, keeping √(1 − ᾱ_0) = 0.01 of the noise: a
    looser bound.)"""
    import torch

    from lumos.trainer.diffusion import Diffusion
    from lumos.generation.sampler import generate

    schedule = Diffusion()
    target = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1)) * 0.5

    class Exact(torch.nn.Module):
        def drop(self, cond, mask, drop):
            return cond, mask

        def epsilon(self, x, t, cond, mask=None):  # what the sampler asks a model for
            a = schedule.sqrt_ab[t.long()].view(-1, 1, 1, 1)
            return (x - a * target) / schedule.sqrt_1m_ab[t.long()].view(-1, 1, 1, 1)

    out = generate(Exact(), torch.zeros(1, 1, 4), None, latent_shape=(4, 8, 8), num=3, steps=20, cfg=4.5,
                   scheduler=scheduler)
    assert (out - target).abs().max() < tolerance, (out - target).abs().max()
