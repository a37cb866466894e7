"""`lumos-train --resume` over a damaged run: a truncated or empty checkpoint file is named in one line, the
checkpoint is moved aside, and training continues from the previous one with exactly the losses of an
uninterrupted run; a half-written last line of metrics.jsonl is dropped; with no intact checkpoint, one line."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from lumos.floor.errors import UserError
from lumos.trainer import checkpoint as ckpt
from lumos.trainer.train import TrainConfig, run_training

TINY = dict(model="DiT-T/2", latents="tiny-vae", condition="tiny-dino", precision="fp32", batch_size=8, lr=1e-3,
            warmup=4, workers=0, log_every=1, save_every=4)
STEPS = 12


def _config(output, **kw):
    return TrainConfig.of(mode="i2i", data=kw.pop("data"), output=str(output), **{**TINY, **kw})


def _logged(run) -> list[tuple[int, float]]:
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return [(r["step"], r["loss"]) for r in map(json.loads, f)]


@pytest.fixture(scope="module")
def runs(feature_table, tmp_path_factory):
    """An uninterrupted run of STEPS steps, and the same run stopped at step 8 (checkpoints 4 and 8)."""
    root = tmp_path_factory.mktemp("damage")
    run_training(_config(root / "whole", data=feature_table, steps=STEPS), say=lambda *_: None)
    run_training(_config(root / "base", data=feature_table, steps=8), say=lambda *_: None)
    return {"whole": str(root / "whole"), "base": str(root / "base"), "data": feature_table}


def _copy(runs, to) -> str:
    shutil.copytree(runs["base"], to)
    return str(to)


def _step(run, n) -> str:
    return os.path.join(run, "checkpoints", f"step-{n:07d}")


def test_truncated_weights_fall_back_to_the_previous_checkpoint(runs, tmp_path):
    run = _copy(runs, tmp_path / "run")
    weights = os.path.join(_step(run, 8), "model.safetensors")
    size = os.path.getsize(weights)
    os.truncate(weights, size // 2)
    flags = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    result = subprocess.run([sys.executable, "-m", "lumos.generation.train_cli", "i2i", "--data", runs["data"], "--output", run,
                             *flags, f"--steps={STEPS}", "--resume"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    said = [line for line in result.stderr.splitlines() if "damaged" in line]
    assert said == [f"--resume: step-0000008 is damaged: model.safetensors is truncated ({size // 2} bytes, {size} "
                    "written), moved to checkpoints/damaged-step-0000008; resuming from step-0000004"], said
    assert _logged(run) == _logged(runs["whole"])  # exact floats; steps 5..8 logged once, not twice
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [4, 8, 12]
    assert os.path.getsize(os.path.join(run, "checkpoints", "damaged-step-0000008", "model.safetensors")) == size // 2
    assert ckpt.damage(_step(run, 8)) is None  # written anew


def test_empty_state_falls_back_and_half_written_metrics_line_is_dropped(runs, tmp_path):
    run = _copy(runs, tmp_path / "run")
    open(os.path.join(_step(run, 8), "state.pt"), "w").close()
    with open(os.path.join(run, "metrics.jsonl"), "a") as f:
        f.write('{"step": 9, "loss": 0.31')  # a run killed while writing its log
    said = []
    run_training(_config(run, data=runs["data"], steps=STEPS, resume=True), say=said.append)
    damaged = [line for line in said if "damaged" in line]
    assert len(damaged) == 1 and damaged[0].startswith("--resume: step-0000008 is damaged: state.pt is empty (0 "
                                                       "bytes, "), damaged
    assert _logged(run) == _logged(runs["whole"])
    assert os.path.getsize(os.path.join(run, "loss.png")) > 0

    intact = _copy(runs, tmp_path / "intact")  # newest checkpoint intact: only the half-written line goes
    with open(os.path.join(intact, "metrics.jsonl"), "a") as f:
        f.write('{"step": 9, "lo')
    said = []
    run_training(_config(intact, data=runs["data"], steps=STEPS, resume=True), say=said.append)
    assert not [line for line in said if "damaged" in line]
    assert _logged(intact) == _logged(runs["whole"])


def test_every_kind_of_damage_is_named_and_no_intact_checkpoint_is_one_line(runs, tmp_path):
    good = _step(runs["base"], 8)

    def damaged(name, change):
        path = str(tmp_path / name)
        shutil.copytree(good, path)
        change(path)
        return ckpt.damage(path)

    def flip(path):  # same size, one byte changed
        with open(os.path.join(path, "ema.safetensors"), "r+b") as f:
            f.seek(-1, os.SEEK_END)
            last = f.read(1)
            f.seek(-1, os.SEEK_END)
            f.write(bytes([last[0] ^ 1]))

    def no_manifest_truncated(path):
        os.remove(os.path.join(path, ckpt.MANIFEST))
        os.truncate(os.path.join(path, "model.safetensors"), 1000)

    assert damaged("flip", flip) == "ema.safetensors does not match its sha256 in manifest.json"
    assert damaged("rng", lambda p: os.remove(os.path.join(p, "rng-rank0.pt"))) == "rng-rank0.pt is missing"
    assert damaged("manifest", lambda p: open(os.path.join(p, ckpt.MANIFEST), "w").write('{"files": ')) == \
        "manifest.json is unreadable (JSONDecodeError)"
    assert damaged("longer", lambda p: open(os.path.join(p, "config.json"), "a").write(" ")).startswith(
        "config.json is longer than written")
    # a checkpoint from before manifests: every file is loaded instead
    assert damaged("legacy", lambda p: os.remove(os.path.join(p, ckpt.MANIFEST))) is None
    assert damaged("legacy-cut", no_manifest_truncated).startswith("model.safetensors is unreadable (SafetensorError")

    run = _copy(runs, tmp_path / "run")
    for step in (4, 8):
        open(os.path.join(_step(run, step), "state.pt"), "w").close()
    with pytest.raises(UserError) as err:
        run_training(_config(run, data=runs["data"], steps=STEPS, resume=True), say=lambda *_: None)
    message = str(err.value)
    assert "\n" not in message and message.startswith("--resume: no intact checkpoint in ")
    assert "step-0000008: state.pt is empty" in message and "step-0000004: state.pt is empty" in message
    assert [s for s, _ in ckpt.list_checkpoints(run)] == [4, 8]  # nothing moved when there is nothing to resume
