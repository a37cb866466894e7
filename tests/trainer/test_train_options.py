"""Impossible option values of `lumos-train` and `lumos-sample` end in one line "error: ...", exit 2, before
anything is written (the run folder is not even created); the Python API refuses them the same way."""

import pytest
from typer.testing import CliRunner

from lumos.floor.errors import UserError
from lumos.generation import sample_cli
from lumos.generation import train_cli as cli
from lumos.trainer.train import TrainConfig, run_training

TRAIN_CASES = [  # (flags, what the one line says)
    (["--steps", "0"], "--steps 0: must be >= 1"),
    (["--steps", "-5"], "--steps -5: must be >= 1"),
    (["--batch-size", "0"], "--batch-size 0: must be >= 1"),
    (["--lr", "0"], "--lr 0.0: must be > 0"),
    (["--lr", "-1e-4"], "--lr -0.0001: must be > 0"),
    (["--lr", "nan"], "--lr nan: must be > 0"),
    (["--warmup", "-1"], "--warmup -1: must be >= 0"),
    (["--weight-decay", "-0.1"], "--weight-decay -0.1: must be >= 0"),
    (["--eps", "0"], "--eps 0.0: must be > 0"),
    (["--save-every", "0"], "--save-every 0: must be >= 1"),
    (["--keep", "0"], "--keep 0: must be >= 1"),
    (["--log-every", "0"], "--log-every 0: must be >= 1"),
    (["--ema", "1"], "--ema 1.0: must be in [0, 1)"),
    (["--ema", "-0.5"], "--ema -0.5: must be in [0, 1)"),
    (["--cond-dropout", "1"], "--cond-dropout 1.0: must be in [0, 1)"),
    (["--cond-dropout", "-0.1"], "--cond-dropout -0.1: must be in [0, 1)"),
    (["--grad-clip", "-1"], "--grad-clip -1.0: must be >= 0"),
    (["--workers", "-1"], "--workers -1: must be >= 0"),
    (["--seed", "-1"], "--seed -1: must be >= 0"),
    (["--sample-every", "-1"], "--sample-every -1: must be >= 0"),
    (["--sample-every", "5", "--sample-rows", "0"], "--sample-rows 0: must be >= 1"),
    (["--precision", "fp8"], "--precision fp8: expected fp16, bf16, fp32 or auto"),
    (["--workers", "many"], "--workers many: expected a number >= 0 or auto"),
    (["--model", "DiT-Q/9"], "--model DiT-Q/9: choose from"),
    (["--caption", "medium"], "--caption medium: expected short, long or mix"),
    (["--caption", "mix", "--caption-mix", "1.5"], "--caption-mix 1.5: must be in [0, 1]"),
]


def _one_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), (result.exit_code, lines)
    return lines[0]


@pytest.mark.parametrize("flags,message", TRAIN_CASES, ids=[" ".join(f) for f, _ in TRAIN_CASES])
def test_lumos_train_refuses_impossible_options_before_writing(tmp_path, flags, message):
    output = tmp_path / "run"
    mode = "t2i" if "--caption" in flags else "i2i"  # each mode takes its own options only
    base = [mode, "--data", str(tmp_path / "features.lance"), "--output", str(output), "--model", "DiT-T/2",
            "--precision", "fp32"]  # --data is not even read: the options are checked first
    line = _one_line(CliRunner().invoke(cli.app, [*base, *flags]))
    assert message in line, line
    assert not output.exists()


def test_python_api_refuses_the_same_values(tmp_path):
    with pytest.raises(UserError, match=r"^--ema 1.5: must be in \[0, 1\)$"):
        run_training(TrainConfig.of(mode="i2i", data=str(tmp_path / "f.lance"), output=str(tmp_path / "run"),
                                 precision="fp32", ema=1.5))
    with pytest.raises(UserError, match="^mode 'x2y': expected i2i or t2i$"):
        TrainConfig.of(mode="x2y", data="d", output="o", precision="fp32").validate()
    assert not (tmp_path / "run").exists()


SAMPLE_CASES = [
    ("i2i", ["--num", "0"], "--num 0: must be >= 1"),
    ("t2i", ["--num", "-3"], "--num -3: must be >= 1"),
    ("interpolate", ["--num", "1"], "--num 1: must be >= 2"),
    ("i2i", ["--steps", "0"], "--steps 0: must be >= 1"),
    ("t2i", ["--cfg", "-1"], "--cfg -1.0: must be >= 0"),
    ("i2i", ["--scheduler", "euler"], "--scheduler euler: expected one of dpm, ddim"),
    ("t2i", ["--device", "tpu"], "--device tpu: expected auto, cpu, cuda or cuda:N"),
    ("i2i", ["--precision", "fp64"], "--precision fp64: expected fp16, bf16, fp32 or auto"),
]


@pytest.mark.parametrize("command,flags,message", SAMPLE_CASES, ids=[f"{c} {' '.join(f)}" for c, f, _ in SAMPLE_CASES])
def test_lumos_sample_refuses_impossible_options_before_loading(tmp_path, command, flags, message):
    out = tmp_path / "grid.png"
    inputs = ["--prompt", "a cat"] if command == "t2i" else ["--image", "a.jpg", "--image", "b.jpg"]
    # a checkpoint that does not exist: the options must be refused before it is looked for
    line = _one_line(CliRunner().invoke(sample_cli.app, [command, "--checkpoint", str(tmp_path / "none"), *inputs,
                                                         "--output", str(out), *flags]))
    assert message in line, line
    assert not out.exists()
