"""`lumos-train i2i | t2i`: train the Lumos DiT from a features table made by lumos-encode.

One process, or one per GPU: `torchrun --nproc_per_node 8 -m lumos.trainer.cli i2i ...` (NCCL on GPUs, gloo
on CPUs; several nodes the torchrun way). --batch-size is per process. README: every option in detail.
"""

from __future__ import annotations

import inspect
import os
from typing import Optional

import typer
from rich.console import Console
from rich.markup import escape

os.environ.setdefault("LANCE_LOG", "error")

from lumos.floor.cli_app import new_app  # noqa: E402
from lumos.floor.errors import UserError  # noqa: E402
from lumos.trainer.models import DIT_MODELS  # noqa: E402

err_console = Console(stderr=True)
app = new_app(__doc__, group=True, no_args_is_help=True)
BOTH, I2I, T2I = ("i2i", "t2i"), ("i2i",), ("t2i",)

# name: (type, option, the modes that have it). Each mode's command takes its own options only.
OPTIONS = {
    "data": (str, typer.Option(..., help="The features table (features.lance from lumos-encode)."), BOTH),
    "output": (str, typer.Option(..., help="The run folder: checkpoints/, metrics.jsonl, loss.png."), BOTH),
    "model": (str, typer.Option("DiT-XL/2", help=f"DiT size: {', '.join(DIT_MODELS)}."), BOTH),
    "latents": (str, typer.Option("sd-vae", help="The VAE whose mean/std columns are the latents."), BOTH),
    "condition": (str, typer.Option("dino-b", help="The image encoder whose features condition."), I2I),
    "condition_tokens": (str, typer.Option("cls", help="cls, patch, all or top119 (lumos-encode --tokens)."),
                         I2I),
    "text": (str, typer.Option("t5-xxl", help="The text encoder whose tokens are the condition."), T2I),
    "caption": (str, typer.Option("short", help="short or long (rows without one are skipped)."), T2I),
    "init": (Optional[str], typer.Option(None, help="An I2I run or checkpoint to start from."), T2I),
    "batch_size": (int, typer.Option(256, help="Samples per forward pass per process."), BOTH),
    "global_batch": (Optional[int], typer.Option(None, help="Samples per optimizer step, by accumulation."), BOTH),
    "steps": (int, typer.Option(65000, help="Total optimizer steps (a resumed run goes on to it)."), BOTH),
    "lr": (float, typer.Option(1.6e-4, help="AdamW learning rate after the warm-up."), BOTH),
    "warmup": (int, typer.Option(1000, help="Linear warm-up steps."), BOTH),
    "weight_decay": (float, typer.Option(0.03, help="AdamW weight decay."), BOTH),
    "precision": (str, typer.Option("auto", help="auto (fp16 on a GPU, fp32 on a CPU), fp16, bf16, fp32."), BOTH),
    "grad_clip": (float, typer.Option(0.01, help="Gradient-norm clipping (0: none)."), BOTH),
    "grad_checkpointing": (bool, typer.Option(False, "--grad-checkpointing",
                                              help="Recompute activations: less memory, ~30% slower."), BOTH),
    "ema": (float, typer.Option(0.9999, help="EMA decay of the sampling weights, in [0, 1)."), BOTH),
    "cond_dropout": (float, typer.Option(0.1, help="Chance of the null condition (for guidance)."), BOTH),
    "save_every": (int, typer.Option(1000, help="Checkpoint every N steps (and at the end)."), BOTH),
    "keep": (int, typer.Option(3, help="Newest checkpoints kept."), BOTH),
    "log_every": (int, typer.Option(10, help="Write metrics.jsonl every N steps."), BOTH),
    "seed": (int, typer.Option(0, help="Seeds the weights, the data order and the noise."), BOTH),
    "resume": (bool, typer.Option(False, "--resume", help="Continue the run in --output from its last intact "
                                  "checkpoint."), BOTH),
    "workers": (str, typer.Option("auto", help="DataLoader processes per rank; auto: 4 with a GPU or over 4 "
                                  "cores, else 0."), BOTH),
    "record_samples": (bool, typer.Option(False, "--record-samples", help="Log each step's sample ids."), BOTH),
    "tensorboard": (bool, typer.Option(False, "--tensorboard", help="Also log to RUN/tensorboard."), BOTH),
    "sample_every": (int, typer.Option(0, help="Every N steps, a grid of held-back rows (0: none)."), BOTH),
    "sample_rows": (int, typer.Option(8, help="Rows held back for those grids."), BOTH),
}
HELP = {"i2i": "Pretrain on image-encoder features (the prior).",
        "t2i": "Fine-tune on T5 text features (--init: I2I run)."}


def say(line: str) -> None:
    """A progress line on stderr, never wrapped or read as markup (paths hold brackets)."""
    err_console.print(line, markup=False, highlight=False, soft_wrap=True)


def workers_of(value: str) -> int | None:
    """--workers: a count, or None for auto (decided where the device is known)."""
    if value == "auto":
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"--workers {value}: expected a number >= 0 or auto") from None


def _train(mode: str, options: dict) -> None:
    from lumos.trainer.train import TrainConfig, run_training

    try:
        config = TrainConfig(mode=mode, **{**options, "workers": workers_of(options["workers"])})
        result = run_training(config, say=say)
    except UserError as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if result["checkpoint"]:
        print(f"trained to step {result['steps']}; last checkpoint: {result['checkpoint']}")


def _command(mode: str):
    """The `mode` command: its options only (typer reads them from the signature)."""

    def command(**options) -> None:
        _train(mode, options)

    params = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=kind)
              for name, (kind, option, modes) in OPTIONS.items() if mode in modes]
    command.__signature__ = inspect.Signature(params)
    command.__doc__ = HELP[mode]
    return command


for _mode in BOTH:
    app.command(_mode)(_command(_mode))


if __name__ == "__main__":
    app()
