"""`lumos-convert`: a released official Lumos checkpoint (e.g. `Lumos_I2I.pth`) as one of our runs, to sample
from (`lumos-sample i2i`) or to fine-tune from (`lumos-train t2i --init`).

The model's size, latent channels, condition width and null tokens are read from the checkpoint's shapes, and
whether it is the multi-scale LumosT2IMS (size embedders: 1024-px bucketed latents, --micro-conditions); the
encoders its features must come from are named (the official model's: `sd-vae` at 256 px, `dino-b` with official
preprocessing or `t5-v1_1-xxl` with official caption cleaning) and recorded as lumos-encode would record them,
so that sampling rebuilds them and `--init` checks the features. The key mapping is
trainer/official_weights.py's.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Optional

import typer
from rich.console import Console

from lumos.floor.cli_app import VERSION, new_app
from lumos.floor.errors import UserError

err_console = Console(stderr=True)
app = new_app(__doc__)
IGNORED = ("versions", "images")  # as the trainer's provenance


def convert(checkpoint: str, output: str, latents: str = "sd-vae", condition: str | None = None,
            resolution: int | None = None, say=print) -> str:
    import torch

    from lumos.pipeline.encoders import EncoderConfig
    from lumos.pipeline.encoders.t5 import T5Encoder
    from lumos.schemas import features
    from lumos.trainer import checkpoint as ckpt
    from lumos.trainer.config import TrainConfig
    from lumos.trainer.data import FeatureColumns
    from lumos.trainer.lumos_arch import T2I_NULL_TOKENS
    from lumos.trainer.models import DIT_MODELS, LumosDiT
    from lumos.trainer.official_weights import to_ours, unwrap

    if not os.path.isfile(checkpoint):
        raise UserError(f"--checkpoint {checkpoint}: no such file")
    if os.path.exists(output) and os.listdir(output):
        raise UserError(f"--output {output} exists and is not empty")
    try:
        official = unwrap(torch.load(checkpoint, map_location="cpu", weights_only=True))
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one line
        raise UserError(f"--checkpoint {checkpoint}: not a PyTorch checkpoint ({str(err).splitlines()[0]})") from None
    if "x_embedder.proj.weight" not in official or "y_embedder.y_embedding" not in official:
        raise UserError(f"--checkpoint {checkpoint}: no x_embedder / y_embedder: not an official Lumos model")
    hidden, channels = official["x_embedder.proj.weight"].shape[:2]
    depth = 1 + max(int(k.split(".")[1]) for k in official if k.startswith("blocks."))
    size = next((name for name, s in DIT_MODELS.items() if (s.depth, s.hidden) == (depth, hidden)), None)
    if size is None:
        raise UserError(f"--checkpoint {checkpoint}: {depth} blocks of width {hidden} is none of our DiT sizes")
    tokens, caption = official["y_embedder.y_embedding"].shape
    # LumosT2IMS (size and aspect-ratio embedders) is the 1024-px multi-aspect model: bucketed latents
    multi_scale = "csize_embedder.mlp.0.weight" in official
    resolution = resolution or (1024 if multi_scale else 256)
    if multi_scale and resolution != 1024:
        raise UserError(f"--resolution {resolution}: the checkpoint is official LumosT2IMS, a 1024-px multi-scale "
                        "model (its size embedders), trained on PixArt's 1024 aspect-ratio bins")
    condition = condition or ("t5-v1_1-xxl" if tokens == T2I_NULL_TOKENS else "dino-b")
    latent_config = EncoderConfig(latents, resolution=resolution, buckets="pixart" if multi_scale else "none")
    condition_config = EncoderConfig(condition)
    latent_encoder, condition_encoder = latent_config.build(), condition_config.build()
    mode = "t2i" if isinstance(condition_encoder, T5Encoder) else "i2i"
    if mode == "t2i" and tokens != T2I_NULL_TOKENS:
        raise UserError(f"--condition {condition} is a text encoder; the checkpoint's null has {tokens} token(s), "
                        f"an I2I model's (official T2I: {T2I_NULL_TOKENS}): give it an image encoder, e.g. dino-b")
    provenance = {role: {k: v for k, v in e.provenance().items() if k not in IGNORED}
                  for role, e in (("latents", latent_encoder), ("condition", condition_encoder))}
    stored = latent_config.stored_name
    bucket_shapes = provenance["latents"].get("bucket_shapes")
    latent_shape = next(tuple(s) for s in bucket_shapes if s[1] == s[2]) if bucket_shapes else \
        tuple(provenance["latents"]["shapes"][features.mean_column(stored)])  # bucketed: the square bin's
    if latent_shape[0] != channels:
        raise UserError(f"--latents {latents}: {latent_shape[0]} channels, the checkpoint's model takes {channels}")
    model = LumosDiT(size, latent_shape[-1], channels, caption, arch="lumos", null_tokens=tokens,
                     hide_transformers=False, micro_conditions=multi_scale,
                     downsample=max(1, resolution // latent_shape[-1]))
    model.load_state_dict(to_ours(official, model.state_dict()))
    name = condition_config.stored_name
    shapes = provenance["condition"]["shapes"]
    key = features.cls_column(name) if mode == "i2i" else features.tokens_column(name)
    if key not in shapes:
        raise UserError(f"--condition {condition}: no {key} features; the checkpoint is an {mode.upper()} model "
                        "(an image encoder, e.g. dino-b)")
    cond_width = shapes[key][-1]
    if cond_width != caption:
        raise UserError(f"--condition {condition}: {cond_width}-d features, the checkpoint's model takes {caption}-d")
    config = TrainConfig.of(mode=mode, data="(converted)", output=output, model=size, arch="lumos", latents=stored,
                            micro_conditions=multi_scale, **({"condition": name} if mode == "i2i" else {"text": name}))
    buckets = dict(bucket=features.bucket_column(stored), bucket_shapes=tuple(tuple(s) for s in bucket_shapes)) \
        if bucket_shapes else {}
    columns = FeatureColumns(features.mean_column(stored), features.std_column(stored),
                             features.cls_column(name) if mode == "i2i" else features.tokens_column(name),
                             None if mode == "i2i" else features.len_column(name), **buckets)
    record = {"train": config.sections(), "provenance": provenance, "world_size": 1, "columns": asdict(columns),
              "scaling_factor": float(provenance["latents"].get("scaling_factor", 0.18215)),
              "converted_from": {"path": os.path.abspath(checkpoint), "sha256": ckpt.sha256(checkpoint),
                                 "layout": "official Lumos (ant-research/lumos)"}}
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    path = ckpt.staging_dir(output, 0)
    ckpt.write_main_state(path, model, model, optimizer, scheduler, scaler, 0, record)
    published = ckpt.publish(output, 0, keep=1)
    say(f"converted {checkpoint} ({size}, {mode}{', multi-scale' if multi_scale else ''}, "
        f"{sum(p.numel() for p in model.parameters()):,} parameters) to {published}")
    return published


@app.command()
def main(checkpoint: str = typer.Option(..., help="The official checkpoint file (.pth): a state dict, or one "
                                        "under state_dict_ema (preferred) or state_dict."),
         output: str = typer.Option(..., help="The run folder to write (must not exist, or be empty)."),
         latents: str = typer.Option("sd-vae", help="The VAE the official model's latents come from (official: "
                                     "sd-vae, sd-vae-ft-mse)."),
         condition: Optional[str] = typer.Option(None, help="The encoder of the condition: I2I an image encoder "
                                                 "(official: dino-b, official preprocessing), T2I a text encoder "
                                                 "(official: t5-v1_1-xxl, captions cleaned). Default: the "
                                                 "official one, t5-v1_1-xxl for a checkpoint whose null has 120 "
                                                 "tokens, else dino-b."),
         resolution: Optional[int] = typer.Option(None, help="The latents' resolution. Default: 256 (LumosI2I, "
                                                  "LumosT2I), 1024 for the multi-scale LumosT2IMS (the released "
                                                  "Lumos_T2I.pth), whose latents are PixArt's 1024 aspect-ratio bins "
                                                  "(sd-vae-1024-pixart)."),
         version: bool = VERSION):
    """Convert an official Lumos checkpoint into a lumos-train run folder (--arch lumos)."""
    try:
        convert(checkpoint, output, latents, condition, resolution,
                say=lambda line: err_console.print(line, highlight=False, soft_wrap=True))
    except UserError as err:
        err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


if __name__ == "__main__":
    app()
