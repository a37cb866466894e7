"""`lumos-convert` (issue 16, item 3): an official-layout checkpoint (tests/trainer/test_official_weights.py's
reference, random weights, saved as a .pth under `state_dict`) becomes a run folder that samples with the
reference's outputs and that a T2I run starts from with --init; a file that is no official model fails in one
line."""

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1] / "trainer"))
from test_official_weights import _reference  # noqa: E402

from lumos.floor.errors import UserError  # noqa: E402
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
    with pytest.raises(UserError, match=f"--init {run} is an --arch lumos run; pass --arch lumos"):  # not a fresh model
        run_training(TrainConfig.of(mode="t2i", data=feature_table, output=str(tmp_path / "pixart"), model="DiT-T/2",
                                    arch="pixart", latents="tiny-vae", text="tiny-t5", precision="fp32", batch_size=4,
                                    steps=2, workers=0, warmup=1, init=str(run)), say=said.append)
    code, lines = _convert("--checkpoint", str(pth), "--output", str(tmp_path / "again"), "--latents", "tiny-vae",
                           "--condition", "tiny-t5")
    assert code == 2 and len(lines) == 1 and "--condition tiny-t5" in lines[0], lines
    (tmp_path / "x.pth").write_bytes(b"not a checkpoint")
    code, lines = _convert("--checkpoint", str(tmp_path / "x.pth"), "--output", str(tmp_path / "x"))
    assert code == 2 and len(lines) == 1 and "not a PyTorch checkpoint" in lines[0], lines


def test_a_multi_scale_t2i_checkpoint_converts_to_a_bucketed_run_that_samples(tmp_path):
    """Official LumosT2IMS's layout (size and aspect-ratio embedders, a 120-token null, 1024-px latents with
    lewei_scale 2): converted to a --micro-conditions run on PixArt's 1024 bins that gives the reference's
    outputs at a non-square bin and samples through lumos-sample t2i."""
    from lumos.generation import sample_cli

    ref = _reference(latent=128, d=48, caption=32, tokens=120, sizes=True, lewei_scale=2.0)  # tiny-t5's 32-d
    pth = tmp_path / "Lumos_T2I_MS.pth"
    torch.save(ref.state_dict(), pth)
    run = tmp_path / "converted-ms"
    code, lines = _convert("--checkpoint", str(pth), "--output", str(run), "--latents", "tiny-vae",
                           "--condition", "tiny-t5")
    assert code == 0 and "DiT-T3/2, t2i, multi-scale" in lines[-1], lines
    trained = load_trained(str(run))
    assert trained.settings["micro_conditions"] and trained.latent_shape == (4, 128, 128)
    assert trained.config["provenance"]["latents"]["buckets"] == "pixart" and trained.downsample == 8
    assert trained.config["provenance"]["condition"]["clean_captions"] == "official"
    x, t = torch.randn(2, 4, 16, 24), torch.tensor([3, 700])
    cond, mask = torch.randn(2, 5, 32), torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    hw, ar = torch.tensor([[128.0, 192.0]] * 2), torch.tensor([[16 / 24]] * 2)
    with torch.no_grad():
        want = ref(x, t, cond, mask, hw=hw, ar=ar)
        assert (trained.model(x, t, cond, mask) - want).abs().max() <= 1e-5 * want.abs().max()
    out = tmp_path / "ms.png"
    result = CliRunner().invoke(sample_cli.app, ["t2i", "--checkpoint", str(run), "--prompt", "A <b>Red</b> Fox",
                                                 "--steps", "2", "--height", "512", "--width", "1024", "--output",
                                                 str(out), "--device", "cpu"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert "sampling at the nearest bin, 704 × 1408 px" in result.stderr and out.exists()
    code, lines = _convert("--checkpoint", str(pth), "--output", str(tmp_path / "ms-256"), "--latents", "tiny-vae",
                           "--condition", "tiny-t5", "--resolution", "256")
    assert code == 2 and len(lines) == 1 and "a 1024-px multi-scale model" in lines[0], lines
