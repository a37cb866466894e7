"""`lumos-export`: a lumos-train run as a diffusers folder.

    DIR/transformer/                 PixArtTransformer2DModel (the EMA weights)
    DIR/scheduler/                   DPM-Solver++ (or DDIM) on the training betas
    DIR/vae/                         the run's VAE (AutoencoderKL; none for `pixels` latents)
    DIR/text_encoder/, tokenizer/    T2I: the run's T5 and its tokenizer (--no-text-encoder: left out)
    DIR/model_index.json             T2I: PixArtAlphaPipeline.from_pretrained(DIR) loads it, offline
    DIR/negative.safetensors         the learned null condition, as `negative_prompt_embeds` and
                                     `negative_prompt_attention_mask` (T2I: 120 tokens; I2I: the run's token count)
    DIR/lumos.json                   where it came from: checkpoint, provenance, weight ids, usage (moved
                                     in last: a folder with it is whole)

The model was trained with a learned null condition, not T5("") as PixArt-α: pass negative.safetensors'
tensors to the pipeline (see lumos.json), or classifier-free guidance pushes away from the wrong point.
"""

from __future__ import annotations

import json
import os
import shutil

import typer
from rich.console import Console

from lumos.floor.cli_app import VERSION, new_app
from lumos.floor.errors import UserError
from lumos.floor.output_lock import LOCK_NAME, output_lock

err_console = Console(stderr=True)
app = new_app(__doc__)
NEGATIVE = "negative.safetensors"
DESCRIPTION = "lumos.json"
STAGING = ".lumos-export.tmp"  # inside the locked folder; its entries are moved out when all are written
MAX_SEQUENCE_LENGTH = 120  # PixArtAlphaPipeline's default T5 length


def negative_condition(model, length: int):
    """The null condition padded to `length` tokens: ((1, length, C) embeds, (1, length) mask)."""
    import torch

    cond = torch.zeros(1, length, model.null.shape[0])
    mask = torch.zeros(1, length, dtype=torch.int64)
    return model.drop(cond, mask, torch.ones(1, dtype=torch.bool))


def load_negative(folder: str, batch: int = 1):
    """(negative_prompt_embeds, negative_prompt_attention_mask) of an exported folder, for `batch` prompts."""
    from safetensors.torch import load_file

    t = load_file(os.path.join(folder, NEGATIVE))
    return (t["negative_prompt_embeds"].expand(batch, -1, -1).contiguous(),
            t["negative_prompt_attention_mask"].expand(batch, -1).contiguous())


def export(checkpoint: str, output: str, scheduler: str = "dpm", text_encoder: bool = True, say=print) -> str:
    from lumos.generation.sampler import load_trained

    if os.path.exists(output) and not os.path.isdir(output):
        raise UserError(f"--output {output} exists and is not a folder")
    with output_lock(output, "lumos-export"):  # one writer: a second export to the same folder fails at once
        staging = os.path.join(output, STAGING)
        shutil.rmtree(staging, ignore_errors=True)  # a killed export's: we hold the lock, nobody else writes it
        if set(os.listdir(output)) - {LOCK_NAME, LOCK_NAME + ".takeover"}:
            raise UserError(f"--output {output} exists and is not empty")
        trained = load_trained(checkpoint)
        if trained.settings.get("arch", "pixart") != "pixart":
            raise UserError(f"{trained.path} is an --arch {trained.settings['arch']} run: its per-block adaLN has no "
                            "place in PixArtTransformer2DModel; lumos-export writes --arch pixart runs")
        _write(trained, staging, scheduler, text_encoder)
        names = sorted(os.listdir(staging), key=lambda n: n == DESCRIPTION)  # lumos.json last: it marks a whole folder
        for name in names:
            os.replace(os.path.join(staging, name), os.path.join(output, name))
        os.rmdir(staging)
    say(f"exported {trained.path} ({trained.mode}) to {output}")
    return output


def _write(trained, staging: str, scheduler: str, text_encoder: bool) -> None:
    import diffusers
    from safetensors.torch import save_file

    from lumos.generation.run_encoders import rebuild
    from lumos.generation.sampler import make_scheduler

    provenance = trained.config["provenance"]
    sched = make_scheduler(scheduler)
    vae = rebuild(provenance["latents"], "latents")
    t2i = trained.mode == "t2i"
    os.makedirs(staging)
    transformer = trained.model.transformer
    has_vae = hasattr(vae.model, "save_pretrained")  # `pixels` latents decode as they are: no VAE to ship
    if t2i and has_vae:
        text = rebuild(provenance["condition"], "condition") if text_encoder else None
        pipe = diffusers.PixArtAlphaPipeline(tokenizer=text.tokenizer() if text else None,
                                             text_encoder=text.model if text else None,
                                             vae=vae.model, transformer=transformer, scheduler=sched)
        pipe.save_pretrained(staging)
        embeds, mask = negative_condition(trained.model, MAX_SEQUENCE_LENGTH)
    else:
        transformer.save_pretrained(os.path.join(staging, "transformer"))
        sched.save_pretrained(os.path.join(staging, "scheduler"))
        if has_vae:
            vae.model.save_pretrained(os.path.join(staging, "vae"))
        embeds, mask = negative_condition(trained.model, MAX_SEQUENCE_LENGTH if t2i else condition_tokens(trained))
    save_file({"negative_prompt_embeds": embeds.contiguous(), "negative_prompt_attention_mask": mask.contiguous()},
              os.path.join(staging, NEGATIVE))
    with open(os.path.join(staging, DESCRIPTION), "w") as f:
        json.dump(describe(trained, scheduler, t2i, text_encoder), f, indent=2, sort_keys=True)


def condition_tokens(trained) -> int:
    """How many tokens an I2I run's condition has: 1 (CLS) or its token set's length."""
    shape = trained.config["provenance"]["condition"]["shapes"][trained.config["columns"]["cond"]]
    return shape[0] if len(shape) == 2 else 1


def describe(trained, scheduler: str, t2i: bool, text_encoder: bool) -> dict:
    provenance = trained.config["provenance"]
    latent = trained.latent_shape
    binned = bool(trained.bucket_shapes)  # bucketed: the pipeline bins a size as our sampler does (same table)
    size = ("height=H, width=W, use_resolution_binning=True (a run on aspect-ratio buckets: the size is binned "
            "to the nearest bucket, as lumos-sample t2i --height --width)") if binned else \
        f"height={latent[-1] * 8}, width={latent[-1] * 8}, use_resolution_binning=False"
    usage = ("pipe = PixArtAlphaPipeline.from_pretrained(DIR); embeds, mask, _, _ = pipe.encode_prompt(prompts, "
             "do_classifier_free_guidance=False); neg, neg_mask = lumos.generation.export.load_negative(DIR, "
             "len(prompts)); pipe(prompt_embeds=embeds, prompt_attention_mask=mask, negative_prompt=None, "
             "negative_prompt_embeds=neg, "
             f"negative_prompt_attention_mask=neg_mask, {size})") if t2i else (
             f"transformer(x, encoder_hidden_states=the L2-normalised condition tokens (N, {condition_tokens(trained)}, D): "
             f"{trained.settings.get('condition_tokens', 'cls')}, timestep=t, added_cond_kwargs="
             "{'resolution': None, 'aspect_ratio': None}); unconditional: negative_prompt_embeds")
    return {"checkpoint": trained.path, "mode": trained.mode, "model": trained.settings["model"],
            "scheduler": scheduler, "latent_shape": list(latent), "scaling_factor": trained.scaling,
            "resolution_binning": binned, "micro_conditions": trained.settings.get("micro_conditions", False),
            "vae": provenance["latents"].get("weights"), "condition": provenance["condition"].get("weights"),
            "text_encoder_included": bool(t2i and text_encoder), "provenance": provenance, "usage": usage}


@app.command()
def main(checkpoint: str = typer.Option(..., help="A lumos-train run folder (its newest checkpoint) or a "
                                        "checkpoints/step-N folder."),
         output: str = typer.Option(..., help="The folder to write (must not exist, or be empty)."),
         scheduler: str = typer.Option("dpm", help="The scheduler to ship: dpm (DPM-Solver++, PixArt's) or ddim."),
         text_encoder: bool = typer.Option(True, help="T2I: copy the run's T5 and tokenizer into the folder "
                                           "(T5-XXL is ~19 GB in fp32); --no-text-encoder leaves them out "
                                           "(pass text_encoder= and tokenizer= to from_pretrained)."),
         version: bool = VERSION):
    """Write a run as a diffusers folder: PixArtAlphaPipeline for T2I runs, the transformer, scheduler and VAE
    for I2I runs; plus the learned null condition to pass as the negative prompt."""
    try:
        export(checkpoint, output, scheduler, text_encoder, say=err_console.print)
    except UserError as err:
        err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


if __name__ == "__main__":
    app()
