"""The paper's T2I stages end to end on the test encoders (issue 15, acceptance 1 and 2): one features table
holds every stage's latents (256 px squares, 512 px PixArt buckets); I2I → T2I 256 from its recipe with
overrides for the tiny size → T2I 512 on buckets from --init, under `torchrun --nproc_per_node 2`, resumed
mid-epoch → sampling at two non-square buckets, and the export of that multi-aspect run, which
PixArtAlphaPipeline samples with its resolution binning to our sampler's latents."""

import json
import os
import socket
import subprocess
import sys
from collections import Counter

import lance
import pytest
import torch
from train_cases import ASPECTS, make_images
from typer.testing import CliRunner

from lumos.generation import sample_cli
from lumos.generation.export import app as export_app
from lumos.generation.export import load_negative
from lumos.generation.run_encoders import TextCondition
from lumos.generation.sampler import generate, load_trained
from lumos.generation.train_cli import app as train_app
from lumos.pipeline.encoders.aspect_buckets import bins, bucket_of
from lumos.pipeline.encode_job import EncoderConfig, run_encode
from lumos.trainer.train import TrainConfig, run_training

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
# the recipes' arch is lumos; these stages are pixart's, which PixArtAlphaPipeline loads (the export checks)
TINY = ["--model", "DiT-T/2", "--arch", "pixart", "--text", "tiny-t5", "--precision", "fp32", "--workers", "0",
        "--warmup", "1"]
BUCKETED = "tiny-vae-512-pixart"
STEPS = 12  # the 512 px stage: 1.5 epochs of 8 steps


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(data, output, init, steps, *extra):
    cmd = [TORCHRUN, "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(_port()),
           "-m", "lumos.generation.train_cli", "t2i", "--config", "t2i-512", "--data", data, "--output", str(output),
           "--latents", BUCKETED, "--init", init, "--steps", str(steps), *TINY, "--batch-size", "1",
           "--global-batch", "4", "--lr", "1e-3", "--log-every", "1", "--save-every", "3", "--record-samples", *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _losses(run):
    with open(os.path.join(run, "metrics.jsonl")) as f:
        return {r["step"]: r["loss"] for r in map(json.loads, f)}


@pytest.fixture(scope="module")
def stages(tmp_path_factory, ray_session):
    root = tmp_path_factory.mktemp("stages")
    images = make_images(root, aspects=True)
    table = str(root / "features.lance")
    run_encode(images, table, [EncoderConfig("tiny-vae"), EncoderConfig("tiny-vae", resolution=512, buckets="pixart"),
                               EncoderConfig("tiny-dino"), EncoderConfig("tiny-t5")], say=lambda *_: None)
    i2i = str(root / "i2i")
    run_training(TrainConfig.of(mode="i2i", data=table, output=i2i, model="DiT-T/2", latents="tiny-vae",
                                condition="tiny-dino", precision="fp32", batch_size=8, steps=30, lr=1e-3, warmup=5,
                                workers=0), say=lambda *_: None)
    t2i_256 = str(root / "t2i-256")
    result = CliRunner().invoke(train_app, ["t2i", "--config", "t2i-256", "--data", table, "--output", t2i_256,
                                            "--latents", "tiny-vae", "--init", i2i, *TINY, "--batch-size", "4",
                                            "--global-batch", "8", "--steps", "4", "--save-every", "4"])
    assert result.exit_code == 0, (result.output, result.exception)
    whole = root / "t2i-512"
    said = _torchrun(table, whole, t2i_256, STEPS).stderr
    return {"table": table, "images": images, "t2i-256": t2i_256, "t2i-512": str(whole), "root": root,
            "said": said}


def test_the_stages_run_end_to_end_on_buckets_under_torchrun_and_resume_mid_epoch(stages):
    table, whole = stages["table"], stages["t2i-512"]
    rows = lance.dataset(table).to_table(columns=["id", "tiny_vae_512_pixart_bucket"]).to_pylist()
    bucket = {r["id"]: r["tiny_vae_512_pixart_bucket"] for r in rows}
    images = lance.dataset(stages["images"]).to_table(columns=["id", "width", "height"]).to_pylist()
    assert {r["id"]: bucket_of(r["width"], r["height"], 512) for r in images} == bucket  # each image's nearest bin
    assert len(set(bucket.values())) == len(ASPECTS)  # four aspect ratios, four bins
    config = json.loads(open(os.path.join(whole, "config.json")).read())
    assert config["train"]["recipe"] == "t2i-512" and config["train"]["checkpoint"]["init"] == stages["t2i-256"]
    assert config["train"]["data"]["global_batch"] == 4 and config["world_size"] == 2  # 2 ranks × 1 × 2 passes
    assert "--init: re-initialised" not in stages["said"]  # 256 → 512 px carries every weight
    # every step from one bucket, the same on both ranks; every row once in the first epoch (8 steps)
    records = [[json.loads(line) for line in open(os.path.join(whole, f"samples-rank{r}.jsonl"))] for r in (0, 1)]
    assert [r["step"] for r in records[0]] == [r["step"] for r in records[1]] == list(range(1, STEPS + 1))
    epoch0 = Counter()
    for a, b in zip(*records):
        assert len({bucket[i] for i in a["ids"] + b["ids"]}) == 1, (a, b)
        if a["epoch"] == 0:
            epoch0.update(a["ids"] + b["ids"])
    assert set(epoch0) == set(bucket) and set(epoch0.values()) == {1}
    # killed mid-epoch (after step 3 of 8), resumed: the losses of the uninterrupted run
    split = stages["root"] / "split"
    _torchrun(table, split, stages["t2i-256"], 3)
    _torchrun(table, split, stages["t2i-256"], STEPS, "--resume")
    a, b = _losses(whole), _losses(str(split))
    assert sorted(b) == list(range(1, STEPS + 1))
    assert max(abs(a[s] - b[s]) for s in a) <= 1e-6, (a, b)


@pytest.mark.parametrize("height,width", [(256, 512), (768, 384)])
def test_a_bucketed_run_samples_at_the_nearest_bucket(stages, tmp_path, height, width):
    trained = load_trained(stages["t2i-512"])
    _, h, w = bins(512)[bucket_of(width, height, 512)]
    assert trained.latent_shape_at(height, width) == (4, h // 8, w // 8) and h != w
    out = tmp_path / "grid.png"
    result = CliRunner().invoke(sample_cli.app, ["t2i", "--checkpoint", stages["t2i-512"], "--prompt", "picture 1",
                                                 "--num", "2", "--steps", "2", "--height", str(height), "--width",
                                                 str(width), "--output", str(out), "--device", "cpu"])
    assert result.exit_code == 0, (result.output, result.exception)
    assert f"sampling at the nearest bin, {h} × {w} px" in result.stderr
    from PIL import Image

    with Image.open(out) as grid:  # two samples side by side, each of the bin's size (plus the grid's margins)
        assert grid.width >= 2 * w and grid.height >= h and grid.width < 2 * w + 64


def test_the_multi_aspect_export_gives_our_latents_in_pixart_alpha_pipeline(stages, tmp_path):
    folder = str(tmp_path / "export")
    result = CliRunner().invoke(export_app, ["--checkpoint", stages["t2i-512"], "--output", folder])
    assert result.exit_code == 0, (result.output, result.exception)
    assert json.load(open(os.path.join(folder, "lumos.json")))["resolution_binning"] is True
    # 300 × 560 is no bin: the pipeline bins it with its 512 px table (a 64-cell transformer), as our sampler
    theirs, ours, shape, _ = _pipeline_latents(folder, load_trained(stages["t2i-512"]), 300, 560)
    assert theirs.shape == ours.shape == (2, *shape) and shape[1] != shape[2]
    assert (theirs - ours).abs().max() <= 1e-4 * max(1.0, float(ours.abs().max())), (theirs - ours).abs().max()
    assert (ours[0] - ours[1]).abs().max() > 0.1  # two samples differ: the check can fail


def _pipeline_latents(folder, trained, height, width, seed=3):
    """PixArtAlphaPipeline's latents at height × width, binned, and ours for the same condition and seed."""
    from diffusers import PixArtAlphaPipeline

    pipe = PixArtAlphaPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    prompts = ["picture 4, picture 4"]
    cond, _ = TextCondition(trained.config["provenance"]["condition"])(prompts)
    _, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False)
    embeds = torch.zeros(1, mask.shape[1], cond.shape[-1])
    embeds[:, :cond.shape[1]] = cond
    negative, negative_mask = load_negative(folder, 1)
    theirs = pipe(prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt=None,
                  negative_prompt_embeds=negative, negative_prompt_attention_mask=negative_mask,
                  num_images_per_prompt=2, num_inference_steps=3, guidance_scale=4.5, height=height, width=width,
                  generator=torch.Generator("cpu").manual_seed(seed), output_type="latent",
                  use_resolution_binning=True).images
    shape = trained.latent_shape_at(height, width)
    ours = generate(trained.model, embeds, mask, latent_shape=shape, num=2, steps=3, cfg=4.5, seed=seed)
    return theirs, ours, shape, (embeds, mask)


def test_micro_conditions_at_1024_px_train_and_export_as_pixart_multi_scale(stages, tmp_path):
    """--micro-conditions (the t2i-1024-ms recipe): PixArt's size and aspect-ratio embeddings, which
    PixArtAlphaPipeline feeds 1024 px transformers; refused in one line at another size."""
    table = str(tmp_path / "features.lance")
    images = make_images(tmp_path, count=4, aspects=True)
    run_encode(images, table, [EncoderConfig("tiny-vae", resolution=1024, buckets="pixart"), EncoderConfig("tiny-t5")],
               say=lambda *_: None)
    common = ["--config", "t2i-1024-ms", *TINY, "--model", "DiT-T3/2", "--batch-size", "1", "--global-batch", "1", "--steps", "2",
              "--save-every", "2", "--lr", "1e-3", "--no-grad-checkpointing"]
    refused = CliRunner().invoke(train_app, ["t2i", *common, "--data", stages["table"], "--latents", BUCKETED,
                                             "--output", str(tmp_path / "no")])
    lines = [line for line in refused.stderr.splitlines() if line.strip()]
    assert refused.exit_code == 2 and len(lines) == 1 and "--micro-conditions: for 1024 px latents" in lines[0], lines
    run = str(tmp_path / "ms")
    result = CliRunner().invoke(train_app, ["t2i", *common, "--data", table, "--output", run,
                                            "--latents", "tiny-vae-1024-pixart"])
    assert result.exit_code == 0, (result.output, result.exception)
    trained = load_trained(run)
    assert trained.model.transformer.config.use_additional_conditions and trained.model.transformer.config.sample_size == 128
    folder = str(tmp_path / "export")
    assert CliRunner().invoke(export_app, ["--checkpoint", run, "--output", folder]).exit_code == 0
    theirs, ours, shape, condition = _pipeline_latents(folder, trained, 700, 1400)
    assert theirs.shape == ours.shape == (2, *shape) and shape[2] > shape[1]
    assert (theirs - ours).abs().max() <= 1e-4 * max(1.0, float(ours.abs().max())), (theirs - ours).abs().max()
    # the micro-conditions matter: the same weights without them give other latents
    trained.model.micro_conditions = False
    trained.model.transformer.adaln_single.emb.use_additional_conditions = False
    plain = generate(trained.model, *condition, latent_shape=shape, num=2, steps=3, cfg=4.5, seed=3)
    assert (plain - ours).abs().max() > 1e-3


def test_sample_every_on_buckets_holds_back_rows_of_one_bin(stages, tmp_path):
    from lumos.generation.train_cli import held_back_grid

    run = tmp_path / "grid"
    run_training(TrainConfig.of(mode="i2i", data=stages["table"], output=str(run), model="DiT-T/2", latents=BUCKETED,
                                condition="tiny-dino", precision="fp32", batch_size=2, steps=2, lr=1e-3, warmup=1,
                                workers=0, sample_every=2, sample_rows=2, record_samples=True),
                 say=lambda *_: None, sample_grid=held_back_grid)
    held = json.load(open(run / "samples" / "held-back.json"))["ids"]
    rows = lance.dataset(stages["table"]).to_table(columns=["id", "tiny_vae_512_pixart_bucket"]).to_pylist()
    bucket = {r["id"]: r["tiny_vae_512_pixart_bucket"] for r in rows}
    assert len(held) == 2 and len({bucket[i] for i in held}) == 1  # one bin: one grid, one latent shape
    trained = [i for line in open(run / "samples-rank0.jsonl") for i in json.loads(line)["ids"]]
    assert not set(held) & set(trained) and (run / "samples" / "step-0000002.png").exists()
