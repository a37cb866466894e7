"""`lumos-train i2i | t2i`: train the Lumos DiT from a features table made by lumos-encode.

One process, or one per GPU: `torchrun --nproc_per_node 8 -m lumos.trainer.cli i2i ...` (NCCL on GPUs, gloo
on CPUs; several nodes the torchrun way). --batch-size is per process.
"""

from __future__ import annotations

import os
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

os.environ.setdefault("LANCE_LOG", "error")

from lumos.floor.errors import UserError  # noqa: E402
from lumos.trainer.models import DIT_MODELS  # noqa: E402

err_console = Console(stderr=True)
app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def say(line: str) -> None:
    """A progress line on stderr, never wrapped or read as markup (paths hold brackets)."""
    err_console.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def train(
    mode: str = typer.Argument(..., help="i2i: image-to-image pretraining on DINO features (the Lumos prior); "
                               "t2i: text-to-image fine-tuning on T5 features, usually --init from an I2I run."),
    data: str = typer.Option(..., help="The features table (features.lance from lumos-encode)."),
    output: str = typer.Option(..., help="The run folder: checkpoints/, metrics.jsonl, loss.png, config.json."),
    model: str = typer.Option("DiT-XL/2", help=f"DiT size: {', '.join(DIT_MODELS)} (DiT-T/2: tests)."),
    latents: str = typer.Option("sd-vae", help="The VAE encoder whose mean/std columns are the latents."),
    condition: str = typer.Option("dino-b", help="i2i: the image encoder whose CLS vector is the condition."),
    text: str = typer.Option("t5-xxl", help="t2i: the text encoder whose tokens are the condition."),
    caption: str = typer.Option("short", help="t2i: short (the caption) or long (the long caption); rows "
                                "without one are skipped and counted."),
    init: Optional[str] = typer.Option(None, help="t2i: an I2I run folder or checkpoint to start from (its EMA "
                                       "weights; the caption projection is re-initialised)."),
    batch_size: int = typer.Option(256, help="Samples per step per process."),
    steps: int = typer.Option(65000, help="Total optimizer steps (a resumed run continues up to this)."),
    lr: float = typer.Option(1.6e-4, help="AdamW learning rate, constant after the warm-up (paper: 1.6e-4)."),
    warmup: int = typer.Option(1000, help="Linear warm-up steps (paper: 1000)."),
    weight_decay: float = typer.Option(0.03, help="AdamW weight decay (paper: 0.03)."),
    precision: str = typer.Option("fp16", help="fp16 (autocast + grad scaler, the paper's; GPU only), bf16 or "
                                  "fp32."),
    grad_clip: float = typer.Option(0.01, help="Gradient-norm clipping (PixArt-α: 0.01; 0: none)."),
    grad_checkpointing: bool = typer.Option(False, help="Recompute activations in the backward pass: less "
                                            "memory, ~30% slower."),
    ema: float = typer.Option(0.9999, help="EMA decay of the weights kept for sampling, in [0, 1)."),
    cond_dropout: float = typer.Option(0.1, help="Probability of replacing the condition by the learned null "
                                       "token (classifier-free guidance)."),
    save_every: int = typer.Option(1000, help="Checkpoint every N steps (and at the end)."),
    keep: int = typer.Option(3, help="How many of the newest checkpoints to keep."),
    log_every: int = typer.Option(10, help="Write metrics.jsonl every N steps."),
    seed: int = typer.Option(0, help="Seeds the weights, the data order and the noise."),
    resume: bool = typer.Option(False, help="Continue the run in --output from its last intact checkpoint, data "
                                "order included (a damaged newer one is moved to checkpoints/damaged-step-N)."),
    workers: int = typer.Option(4, help="DataLoader worker processes per rank (spawned; 0: load in the main "
                                "process)."),
    record_samples: bool = typer.Option(False, help="Write each step's sample ids to RUN/samples-rank{r}.jsonl "
                                        "(to audit the data order)."),
    tensorboard: bool = typer.Option(False, help="Also log to RUN/tensorboard (needs the tensorboard package)."),
    sample_every: int = typer.Option(0, help="Every N steps, write RUN/samples/step-N.png: the EMA model's samples "
                                     "for --sample-rows held-back rows (0: none; rows are held back only then)."),
    sample_rows: int = typer.Option(8, help="Rows held back from training for the --sample-every grids (their "
                                    "ids: RUN/samples/held-back.json)."),
):
    """Train the DiT on cached features; no encoder runs here."""
    from lumos.trainer.train import TrainConfig, run_training

    try:
        if mode not in ("i2i", "t2i"):
            raise UserError(f"mode {mode!r}: expected i2i or t2i")
        config = TrainConfig(mode=mode, data=data, output=output, model=model, latents=latents,
                             condition=condition, text=text, caption=caption, init=init, batch_size=batch_size,
                             steps=steps, lr=lr, warmup=warmup, weight_decay=weight_decay, precision=precision,
                             grad_clip=grad_clip, grad_checkpointing=grad_checkpointing, ema=ema,
                             cond_dropout=cond_dropout, save_every=save_every, keep=keep, log_every=log_every,
                             seed=seed, resume=resume, workers=workers, record_samples=record_samples,
                             tensorboard=tensorboard, sample_every=sample_every, sample_rows=sample_rows)
        result = run_training(config, say=say)
    except UserError as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if result["checkpoint"]:
        print(f"trained to step {result['steps']}; last checkpoint: {result['checkpoint']}")


if __name__ == "__main__":
    app()
