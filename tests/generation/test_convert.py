"""`lumos-convert` (issue 16, item 3): an official-layout checkpoint (tests/trainer/test_official_weights.py's
reference, random weights, saved as a .pth under `state_dict`) becomes a run folder that samples with the
reference's outputs and that a T2I run starts from with --init; a file that is no official model fails in one
line."""

import json
import sys
from pathlib import Path

import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1] / "trainer"))
from test_official_weights import _reference  # noqa: E402

from lumos.generation.convert_cli import app  # noqa: E402
from lumos.generation.sampler import load_trained  # noqa: E402
from lumos.trainer.train import TrainConfig, run_training  # noqa: E402


def _convert(*args):
    result = CliRunner().invoke(app, list(args))
    assert result.exit_code in (0, 2), (result.output, result.exception)
    return result.exit_code, [line for line in result.stderr.splitlines() if line.strip()]


def test_an_official_checkpoint_converts_samples_and_starts_a_t2i_run(feature_table, tmp_path):
    ref = _reference(latent=32, caption=64, tokens=1)  # tiny-vae latents at 256 px, tiny-dino's 64-d CLS
    pth = tmp_path / "Lumos_I2I.pth"
    torch.save({"state_dict": ref.state_dict(), "step": 1}, pth)
    run = tmp_path / "converted"
    code, lines = _convert("--checkpoint", str(pth), "--output", str(run), "--latents", "tiny-vae",
                           "--condition", "tiny-dino")
    assert code == 0 and "converted" in lines[-1] and "DiT-T/2, i2i" in lines[-1], lines
    trained = load_trained(str(run))
    record = json.loads((Path(trained.path) / "config.json").read_text())
    assert record["converted_from"]["path"] == str(pth) and len(record["converted_from"]["sha256"]) == 64
    assert record["train"]["model"]["arch"] == "lumos" and record["provenance"]["latents"]["encoder"] == "tiny-vae"
    x, t, cond = torch.randn(2, 4, 32, 32), torch.tensor([10, 800]), torch.randn(2, 1, 64)
    with torch.no_grad():
        want = ref(x, t, cond)
        assert (trained.model(x, t, cond) - want).abs().max() <= 1e-5 * want.abs().max()
    said = []
    run_training(TrainConfig.of(mode="t2i", data=feature_table, output=str(tmp_path / "t2i"), model="DiT-T/2",
                                arch="lumos", latents="tiny-vae", text="tiny-t5", precision="fp32", batch_size=4,
                                steps=2, workers=0, warmup=1, init=str(run)), say=said.append)
    reinit = next(line for line in said if line.startswith("--init: re-initialised"))
    assert reinit.endswith("null, transformer.caption_projection.linear_1.weight"), reinit  # I2I → T2I parts only
    code, lines = _convert("--checkpoint", str(pth), "--output", str(tmp_path / "again"), "--latents", "tiny-vae",
                           "--condition", "tiny-t5")
    assert code == 2 and len(lines) == 1 and "--condition tiny-t5" in lines[0], lines
    (tmp_path / "x.pth").write_bytes(b"not a checkpoint")
    code, lines = _convert("--checkpoint", str(tmp_path / "x.pth"), "--output", str(tmp_path / "x"))
    assert code == 2 and len(lines) == 1 and "not a PyTorch checkpoint" in lines[0], lines
