"""`lumos-export`: for the same weights, seed and scheduler, our sampler and diffusers give the same latents:
PixArtAlphaPipeline.from_pretrained(DIR) for a T2I run (prompts through its own tokenizer and T5), a plain
PixArtTransformer2DModel loop for an I2I run."""

import json
import os

import pytest
import torch
from typer.testing import CliRunner

from lumos.curation.sample import synthetic_image
from lumos.generation.export import app, load_negative
from lumos.generation.run_encoders import ImageCondition, TextCondition
from lumos.generation.sampler import generate, load_trained

STEPS = 5


def _export(run, out, *extra):
    result = CliRunner().invoke(app, ["--checkpoint", run, "--output", str(out), *extra])
    assert result.exit_code == 0, (result.output, result.exception)
    return str(out)


@pytest.mark.parametrize("scheduler,wide", [("dpm", False), ("ddim", False), ("dpm", True)],
                         ids=["dpm", "ddim", "dpm-non-square"])
def test_t2i_export_gives_the_same_latents_in_pixart_alpha_pipeline(sample_runs, tmp_path, scheduler, wide):
    from diffusers import PixArtAlphaPipeline

    folder = _export(sample_runs["t2i"], tmp_path / "export", "--scheduler", scheduler)
    prompts = ["picture 4, picture 4", "a red square on a blue sky"]
    pipe = PixArtAlphaPipeline.from_pretrained(folder)  # offline: everything is in the folder
    pipe.set_progress_bar_config(disable=True)
    negative, negative_mask = load_negative(folder, len(prompts))
    size = json.load(open(os.path.join(folder, "lumos.json")))["latent_shape"][-1] * 8
    embeds, mask, _, _ = pipe.encode_prompt(prompts, do_classifier_free_guidance=False)  # its tokenizer and T5
    trained = load_trained(sample_runs["t2i"])
    cond, our_mask = TextCondition(trained.config["provenance"]["condition"])(prompts)
    # the same tokens as ours (ours are rounded to fp16, as lumos-encode stores them); padding is masked out
    longest = our_mask.shape[1]
    assert torch.equal(mask[:, :longest], our_mask) and mask[:, longest:].sum() == 0
    valid = our_mask.bool()
    assert (embeds[:, :longest][valid] - cond[valid]).abs().max() <= 1e-3 * cond.abs().max()
    embeds = torch.zeros_like(embeds)  # the same condition in both samplers: ours, padded as the pipeline pads
    embeds[:, :longest] = cond
    theirs = pipe(prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt=None,
                  negative_prompt_embeds=negative, negative_prompt_attention_mask=negative_mask,
                  num_images_per_prompt=2, num_inference_steps=STEPS, guidance_scale=4.5, height=size,
                  width=size * 3 // 2 if wide else size,  # non-square: the position table is made for the size
                  generator=torch.Generator("cpu").manual_seed(7), output_type="latent",
                  use_resolution_binning=False).images

    shape = trained.latent_shape_at(size, size * 3 // 2 if wide else size)
    ours = generate(trained.model, embeds, mask, latent_shape=shape, num=2, steps=STEPS, cfg=4.5,
                    scheduler=scheduler, seed=7)
    assert theirs.shape == ours.shape == (4, *shape) and shape[2] == (shape[1] * 3 // 2 if wide else shape[1])
    assert (theirs - ours).abs().max() < 1e-4, ((theirs - ours).abs().max(), ours.abs().max())
    # lumos-sample pads to the longest prompt, not to 120: the same latents up to float summation order
    # (these barely trained tiny models give latents of magnitude ~100, so the bound is relative)
    shortest = generate(trained.model, cond, our_mask, latent_shape=shape, num=2, steps=STEPS,
                        cfg=4.5, scheduler=scheduler, seed=7)
    assert (shortest - ours).abs().max() <= 1e-5 * ours.abs().max()
    assert (ours[0] - ours[1]).abs().max() > 0.1  # two samples of one prompt differ: the check can fail


def test_i2i_export_gives_the_same_latents_in_a_transformer_loop(sample_runs, tmp_path):
    from diffusers import DPMSolverMultistepScheduler, PixArtTransformer2DModel
    from safetensors.torch import load_file

    folder = _export(sample_runs["i2i"], tmp_path / "export")
    trained = load_trained(sample_runs["i2i"])
    images = [synthetic_image(300, 280, seed=s) for s in (1, 2)]
    cond = ImageCondition(trained.config["provenance"]["condition"])(images)  # (2, 1, D)
    ours = generate(trained.model, cond, None, latent_shape=trained.latent_shape, num=1, steps=STEPS, cfg=3.0, seed=3)

    transformer = PixArtTransformer2DModel.from_pretrained(os.path.join(folder, "transformer")).eval()
    scheduler = DPMSolverMultistepScheduler.from_pretrained(os.path.join(folder, "scheduler"))
    null = load_file(os.path.join(folder, "negative.safetensors"))["negative_prompt_embeds"].expand(2, -1, -1)
    scheduler.set_timesteps(STEPS)
    x = torch.randn((2, *trained.latent_shape), generator=torch.Generator("cpu").manual_seed(3))
    with torch.no_grad():
        for t in scheduler.timesteps:
            eps = transformer(torch.cat([x, x]), encoder_hidden_states=torch.cat([null, cond]),
                              timestep=t.expand(4), added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                              return_dict=False)[0]
            uncond, conditional = eps.chunk(2)
            x = scheduler.step(uncond + 3.0 * (conditional - uncond), t, x, return_dict=False)[0]
    assert (x - ours).abs().max() < 1e-4, ((x - ours).abs().max(), ours.abs().max())
    assert (ours[0] - ours[1]).abs().max() > 0.1


def test_export_refuses_a_folder_in_use(sample_runs, tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "x").write_text("x")
    result = CliRunner().invoke(app, ["--checkpoint", sample_runs["i2i"], "--output", str(tmp_path / "used")])
    assert result.exit_code == 2 and "exists and is not empty" in result.output
