"""`lumos-encode`: run frozen encoders once over an images table, into feature columns in Lance."""

from __future__ import annotations

import os
from typing import Optional

import typer
from rich.console import Console

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("LANCE_LOG", "error")

from lumos.floor.cli_app import VERSION, new_app  # noqa: E402
from lumos.floor.errors import UserError  # noqa: E402
from lumos.pipeline.encoders import ENCODERS, LATENT_ENCODERS  # noqa: E402
from lumos.pipeline.options import encode_options  # noqa: E402

err_console = Console(stderr=True)
app = new_app(__doc__, no_args_is_help=True)


@app.command()
def encode(
    encoder: list[str] = typer.Option(..., "--encoder", help=f"Encoder to run; repeat for several. One of: "
                                      f"{', '.join(ENCODERS)} (tiny-*: seeded random test models)."),
    input: str = typer.Option(..., "--input", help="The images table (images.lance from lumos-curate)."),
    output: str = typer.Option(..., "--output", help="The features table (created, or given new columns)."),
    resolution: int = typer.Option(256, help="VAE input size: center square crop resized to this (paper: 256). "
                                   "Latents at another size, or bucketed, go by a name that says so "
                                   "(sd-vae-512, sd-vae-1024-pixart), so one table holds several."),
    buckets: str = typer.Option("none", help="VAE / pixels latents: none (the center square) or pixart (each image "
                                "resized and cropped to the nearest aspect-ratio bin of PixArt's table for "
                                "--resolution, 256, 512 or 1024; per-row latent shapes and the bin in "
                                "`{name}_bucket`; lumos-train then draws every step from one bin)."),
    batch_size: int = typer.Option(32, help="Rows per encoder forward."),
    weights: Optional[str] = typer.Option(None, help="Local weights for the (single) real encoder instead of its "
                                          "hub id: a folder (VAE, T5), a file (timm ViT, open_clip), the "
                                          "vit-b-300ep.pth.tar checkpoint (mocov3-b, required)."),
    device: str = typer.Option("auto", help="auto: GPUs when the Ray cluster has them; cuda; cpu."),
    precision: str = typer.Option("fp32", help="Compute dtype: fp32, or bf16 (faster on GPUs; T5-XXL is "
                                  "usually run in bf16). Never fp16: T5 overflows to NaN. Stored features are "
                                  "fp16 either way."),
    tokens: str = typer.Option("cls", help="ViT encoders (dino-b, dinov2-b, clip-l, mocov3-b, tiny-dino, "
                               "tiny-clip): what to store besides the CLS vector, as `{name}_tokens`: cls (nothing "
                               "more, as the paper's model), patch, all (CLS + patches), top119 (CLS + the 119 "
                               "patches the CLS attends to most). Other encoders ignore it."),
    dino_preprocess: str = typer.Option("official", help="dino-b's transform: official (short side to 224, "
                                        "bilinear, center crop 224: official Lumos', what the released model saw) "
                                        "or resize256 (short side to 256, bicubic, center 224: timm's, this "
                                        "tool's before). Recorded in the provenance; other encoders ignore it."),
    clean_captions: str = typer.Option("official", help="T5 encoders: official (each caption and long caption "
                                       "cleaned as official Lumos / PixArt-α before tokenising: lower-cased, URLs, "
                                       "HTML, @mentions, file names and shop boilerplate dropped; a caption left "
                                       "empty counts as none) or none (as written). Recorded in the provenance; "
                                       "lumos-sample cleans prompts the same way. Other encoders ignore it."),
    gpus_per_actor: float = typer.Option(1.0, help="GPUs each encoder actor takes; below 1 packs several actors "
                                         "on one GPU (e.g. 0.5 for dino-b). The cluster's GPUs are split evenly "
                                         "between the encoders of one command, each with its own actors."),
    commit_every: float = typer.Option(300.0, help="Seconds between commits of finished fragments: what a "
                                       "killed run can lose (each commit is a Lance version, cleaned at the end)."),
    version: bool = VERSION,
):
    """Encode every image with each encoder, reading and decoding each image once for all of them. Features
    follow the images table's fragments; re-running is a no-op, a killed run resumes by fragment, a grown
    images table gets its new fragments encoded."""
    from lumos.pipeline.encode_job import EncoderConfig, run_encode

    try:
        if device not in ("auto", "cuda", "cpu"):
            raise UserError(f"--device {device}: expected auto, cuda or cpu")
        if weights and len(encoder) > 1:
            raise UserError("--weights applies to one encoder: run the encoders one at a time")
        encode_options(resolution, batch_size, gpus_per_actor, commit_every)  # impossible values: one line, nothing written
        for name in encoder:
            if name not in ENCODERS:
                raise UserError(f"unknown encoder {name!r}; choose from {', '.join(ENCODERS)}")
        configs = [EncoderConfig(name, resolution, weights, precision=precision, tokens=tokens,
                                 buckets=buckets if name in LATENT_ENCODERS else "none",
                                 preprocess=dino_preprocess, clean_captions=clean_captions) for name in encoder]
        for c in configs:
            c.build()  # an unknown name or option fails here
        stats = run_encode(input, output, configs, device, batch_size, gpus_per_actor, say=err_console.print,
                           progress=True, commit_every=commit_every)
    except UserError as err:
        err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    for name, s in stats["encoders"].items():
        missing = ", ".join(f"{n} {k}" for k, n in s.items() if k not in ("rows", "encoded_now", "seconds") and n)
        print(f"{name}: {s['rows']} rows ({s['encoded_now']} encoded now) in {s['seconds']:.1f}s; "
              f"without features: {missing or 'none'}")


if __name__ == "__main__":
    app()
