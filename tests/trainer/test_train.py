"""`lumos-train` on features made by lumos-curate → lumos-encode (tiny encoders), DiT-T/2 on CPU: the loss
falls, checkpoints hold everything, resume is exact (after --steps k and after SIGKILL), refusals are one
line, T2I starts from I2I and a stage from a lower-resolution run (tests/trainer/test_trainer_apart.py: no
encoder in the training process)."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import lance
import pytest
import torch
from train_cases import ROWS

from lumos.floor.errors import UserError
from lumos.pipeline.encode_job import EncoderConfig, run_encode
from lumos.trainer import checkpoint as ckpt
from lumos.trainer.config import flat_record
from lumos.trainer.train import TrainConfig, run_training

TINY = dict(model="DiT-T/2", latents="tiny-vae", condition="tiny-dino", text="tiny-t5", precision="fp32",
            batch_size=8, lr=1e-3, warmup=10, workers=0, log_every=1)


def _config(mode, data, output, **kw):
    return TrainConfig.of(mode=mode, data=data, output=str(output), **{**TINY, **kw})


def _losses(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


def _cli(*args, **kw):
    return subprocess.run([sys.executable, "-m", "lumos.generation.train_cli", *args], capture_output=True, text=True,
                          timeout=600, **kw)


def _flags(mode, data, output, **kw):
    args = [mode, "--data", data, "--output", str(output)]
    for key, value in {**TINY, **kw}.items():
        if key in ("condition", "text") and ((mode == "i2i") != (key == "condition")):
            continue
        args += [f"--{key.replace('_', '-')}", str(value)]
    return args


def test_i2i_loss_falls_and_checkpoints_hold_everything(feature_table, tmp_path):
    run = tmp_path / "run"
    result = _cli(*_flags("i2i", feature_table, run, steps=300, save_every=100, log_every=10))
    assert result.returncode == 0, result.stderr[-3000:]
    losses = _losses(str(run))
    assert sorted(losses) == list(range(10, 301, 10))
    first, last = losses[10], sum(losses[s] for s in range(260, 301, 10)) / 5
    assert last < 0.7 * first, (first, last)
    found = ckpt.list_checkpoints(str(run))
    assert [s for s, _ in found] == [100, 200, 300]
    assert sorted(os.listdir(found[-1][1])) == ["config.json", "ema.safetensors", "manifest.json",
                                                "model.safetensors", "rng-rank0.pt", "state.pt"]
    assert ckpt.damage(found[-1][1]) is None  # every file matches the size and sha256 in its manifest
    assert (run / "loss.png").stat().st_size > 0 and (run / "config.json").exists()
    config = ckpt.read_config(found[-1][1])
    assert config["provenance"]["latents"]["encoder"] == "tiny-vae" and config["scaling_factor"] == 0.18215
    state = ckpt.read_state(found[-1][1])  # weights_only=True
    assert state["step"] == 300 and len(state["optimizer"]["state"]) > 0
    assert state["scaler"] == {}  # fp32 on a CPU: no grad scaler
    ema, model = ckpt.read_weights(found[-1][1], "ema"), ckpt.read_weights(found[-1][1], "model")
    assert ema.keys() == model.keys() and any(not torch.equal(ema[k], model[k]) for k in ema)


def test_resume_after_steps_k_logs_the_same_losses(feature_table, tmp_path):
    whole, split = tmp_path / "whole", tmp_path / "split"
    run_training(_config("i2i", feature_table, whole, steps=30, save_every=10), say=lambda *_: None)
    run_training(_config("i2i", feature_table, split, steps=13, save_every=10), say=lambda *_: None)
    run_training(_config("i2i", feature_table, split, steps=30, save_every=10, resume=True, workers=2),
                 say=lambda *_: None)  # resumed with 2 spawned DataLoader workers: same order
    a, b = _losses(str(whole)), _losses(str(split))
    assert sorted(b) == list(range(1, 31))
    assert max(abs(a[s] - b[s]) for s in range(14, 31)) <= 1e-6


def test_auto_precision_and_workers_fit_the_machine_and_are_recorded(feature_table, tmp_path):
    run = tmp_path / "run"
    config = TrainConfig.of(mode="i2i", data=feature_table, output=str(run), model="DiT-T/2", latents="tiny-vae",
                         condition="tiny-dino", batch_size=4, steps=1, log_every=1)
    assert (config.model.precision, config.data.workers) == ("auto", None)  # the defaults
    run_training(config, say=lambda *_: None)
    with open(run / "config.json") as f:
        train = flat_record(json.load(f)["train"])
    cuda = torch.cuda.is_available()
    assert train["precision"] == ("fp16" if cuda else "fp32")
    assert train["workers"] == (4 if cuda or os.cpu_count() > 4 else 0)
    assert config.model.precision == "auto"  # the caller's config is left as given


def test_settings_changed_on_resume_are_in_force_and_said(feature_table, tmp_path):
    run, said = tmp_path / "run", []
    run_training(_config("i2i", feature_table, run, steps=12, save_every=12), say=lambda *_: None)
    run_training(_config("i2i", feature_table, run, steps=16, save_every=4, resume=True, lr=2.5e-4, warmup=20,
                         weight_decay=0.1, grad_clip=0.5, eps=1e-9), say=said.append)
    lines = [x for x in said if x.startswith("--resume")]
    assert lines == ["--resume: in force from here: eps 1e-09 (was 1e-10), grad-clip 0.5 (was 0.01), lr 0.00025 "
                     "(was 0.001), save-every 4 (was 12), steps 16 (was 12), warmup 20 (was 10), weight-decay 0.1 "
                     "(was 0.03)"], said
    with open(os.path.join(run, "metrics.jsonl")) as f:
        lrs = {r["step"]: r["lr"] for r in map(json.loads, f)}
    assert lrs[12] == pytest.approx(1e-3)  # before: warm-up of 10 steps over, the old rate
    for step in range(13, 17):  # the new rate, on the new warm-up of 20 steps (scheduler step = optimizer step)
        assert lrs[step] == pytest.approx(2.5e-4 * min(1.0, (step + 1) / 20)), (step, lrs[step])
    state = ckpt.read_state(ckpt.list_checkpoints(str(run))[-1][1])
    groups = state["optimizer"]["param_groups"]
    assert [g["weight_decay"] for g in groups] == [0.1] and [g["initial_lr"] for g in groups] == [2.5e-4]
    assert [g["eps"] for g in groups] == [1e-9]
    with open(run / "config.json") as f:
        train = flat_record(json.load(f)["train"])
    assert (train["lr"], train["warmup"], train["weight_decay"], train["grad_clip"]) == (2.5e-4, 20, 0.1, 0.5)


def test_resume_after_sigkill_logs_the_same_losses(feature_table, tmp_path):
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    run_training(_config("i2i", feature_table, whole, steps=60, save_every=20), say=lambda *_: None)
    proc = subprocess.Popen([sys.executable, "-m", "lumos.generation.train_cli",
                             *_flags("i2i", feature_table, killed, steps=60, save_every=20)],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None and not (killed / "checkpoints" / "step-0000020").exists():
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert [s for s, _ in ckpt.list_checkpoints(str(killed))] in ([20], [20, 40])
    assert json.loads((killed / ".lumos.lock").read_text())["pid"] == proc.pid  # the dead run's lock is left
    result = _cli(*_flags("i2i", feature_table, killed, steps=60, save_every=20), "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = _losses(str(whole)), _losses(str(killed))
    assert sorted(b) == list(range(1, 61))  # lines logged after the checkpoint by the killed run were dropped
    assert not (killed / ".lumos.lock").exists()  # taken over from the dead run, released at the end
    assert max(abs(a[s] - b[s]) for s in range(1, 61)) <= 1e-6


def test_features_made_differently_are_refused_in_one_line(feature_table, tmp_path, ray_session):
    run = tmp_path / "run"
    run_training(_config("i2i", feature_table, run, steps=2), say=lambda *_: None)
    images = lance.dataset(feature_table).schema.metadata  # the images table these features came from
    images_uri = json.loads(images[b"lumos.encoder.tiny-vae"])["images"]["path"]
    other = str(tmp_path / "other.lance")
    run_encode(images_uri, other, [EncoderConfig("tiny-vae"), EncoderConfig("tiny-vae", resolution=128),
                                   EncoderConfig("tiny-dino", resolution=128), EncoderConfig("tiny-t5")],
               say=lambda *_: None)
    result = _cli(*_flags("i2i", other, run, steps=4), "--resume")
    lines = [x for x in result.stderr.splitlines() if x.strip()]
    assert result.returncode == 2 and len(lines) == 1, lines
    assert "condition features made differently" in lines[0] and "resolution" in lines[0]
    # progressive resolution (issue 15, item 3): a 128-px stage starts whole from the 256-px run (the position
    # embedding is a sin-cos table of the latent size, no weight); only the I2I → T2I parts start fresh
    said = []
    run_training(_config("t2i", other, tmp_path / "t2i", steps=1, init=str(run), latents="tiny-vae-128"),
                 say=said.append)
    reinit = [line for line in said if line.startswith("--init: re-initialised")]
    assert reinit == ["--init: re-initialised (no weight of the same shape in the I2I model): "
                      "null, transformer.caption_projection.linear_1.weight"], said
    # but a run on latents of another VAE (here: other weights) is refused in one line
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(run, elsewhere)
    saved = Path(ckpt.latest(str(elsewhere))) / "config.json"
    config = json.loads(saved.read_text())
    config["provenance"]["latents"]["weights_path"] = "/other/vae"
    saved.write_text(json.dumps(config))
    with pytest.raises(UserError, match="--init .* was trained on other latents than --data .*weights_path"):
        run_training(_config("t2i", other, tmp_path / "t2i-b", steps=2, init=str(elsewhere)), say=lambda *_: None)
    for args, message in [((_flags("i2i", feature_table, run, steps=4)), "already holds a run"),
                          ((*_flags("i2i", feature_table, run, steps=4, batch_size=4), "--resume"),
                           "was trained with other batch_size"),
                          ((_flags("i2i", feature_table, tmp_path / "x", steps=4, condition="dino-b")),
                           "holds no dino-b features"),
                          ((_flags("i2i", feature_table, tmp_path / "x", steps=4, precision="fp16")),
                           "--precision fp16 needs a GPU")]:
        result = _cli(*args)
        lines = [x for x in result.stderr.splitlines() if x.strip()]
        assert result.returncode == 2 and len(lines) == 1 and message in lines[0], lines


def test_t2i_init_loads_every_i2i_weight_that_fits(feature_table, tmp_path):
    i2i = tmp_path / "i2i"
    run_training(_config("i2i", feature_table, i2i, steps=5), say=lambda *_: None)
    said = []
    run_training(_config("t2i", feature_table, tmp_path / "t2i", steps=1, init=str(i2i), lr=1e-30,
                         weight_decay=0.0), say=said.append)
    reinit = [line for line in said if line.startswith("--init: re-initialised")]
    assert len(reinit) == 1 and "caption_projection.linear_1.weight" in reinit[0] and "null" in reinit[0]
    source = ckpt.read_weights(ckpt.latest(str(i2i)), "ema")
    loaded = ckpt.read_weights(ckpt.latest(str(tmp_path / "t2i")), "model")  # lr 1e-30: still the loaded weights
    fits = [k for k in loaded if k in source and source[k].shape == loaded[k].shape]
    assert len(fits) == len(loaded) - 2
    assert all(torch.equal(loaded[k], source[k]) for k in fits)
    assert any(f"{ROWS - 1} rows (1 skipped: no tiny_t5_tokens)" in line for line in said)  # the blank prompt
