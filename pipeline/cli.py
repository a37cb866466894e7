"""`lumos-encode`: run frozen encoders once over an images table, into feature columns in Lance."""

from __future__ import annotations

import os
from typing import Optional

import typer
from rich.console import Console

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("LANCE_LOG", "error")

from lumos.curation.errors import UserError  # noqa: E402
from lumos.pipeline.encoders import ENCODERS  # noqa: E402

err_console = Console(stderr=True)
app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


@app.command()
def encode(
    encoder: list[str] = typer.Option(..., "--encoder", help=f"Encoder to run; repeat for several. One of: "
                                      f"{', '.join(ENCODERS)} (tiny-*: seeded random test models)."),
    input: str = typer.Option(..., "--input", help="The images table (images.lance from lumos-curate)."),
    output: str = typer.Option(..., "--output", help="The features table (created, or given new columns)."),
    resolution: int = typer.Option(256, help="VAE input size: center square crop resized to this (paper: 256)."),
    batch_size: int = typer.Option(32, help="Images per encoder forward."),
    weights: Optional[str] = typer.Option(None, help="Local weights for the (single) real encoder, instead of "
                                          "its hub id."),
    device: str = typer.Option("auto", help="auto: GPUs when the Ray cluster has them; cuda; cpu."),
):
    """Encode every image once per encoder; re-running is a no-op, a killed run resumes by shard."""
    from lumos.pipeline.encode_job import EncoderConfig, run_encode

    try:
        if device not in ("auto", "cuda", "cpu"):
            raise UserError(f"--device {device}: expected auto, cuda or cpu")
        if weights and len(encoder) > 1:
            raise UserError("--weights applies to one encoder: run the encoders one at a time")
        configs = [EncoderConfig(name, resolution, weights) for name in encoder]
        for c in configs:
            c.build()  # an unknown name fails here
        stats = run_encode(input, output, configs, device, batch_size, say=err_console.print)
    except UserError as err:
        err_console.print(f"[red]error:[/red] {err}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    for name, s in stats["encoders"].items():
        print(f"{name}: {s['images']} images, {s['failed_to_decode']} failed to decode, {s['seconds']:.1f}s")


if __name__ == "__main__":
    app()
