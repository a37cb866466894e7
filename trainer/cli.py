"""`lumos-train i2i | t2i`: train the Lumos DiT from a features table made by lumos-encode.

Settings come from the defaults (the paper's), then the run being resumed (--resume), then a recipe
(--config NAME|PATH: configs/*.toml), then the flags given. One process, or one per GPU: `torchrun
--nproc_per_node 8 -m lumos.generation.train_cli i2i ...` (NCCL on GPUs, gloo on CPUs). --batch-size is per
process. README: every option in detail.
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
from lumos.trainer.config import BOTH, TrainConfig, default_of, flat_record, option_specs, read_recipe  # noqa: E402

err_console = Console(stderr=True)
HELP = {"i2i": "Pretrain on image-encoder features (the prior).",
        "t2i": "Fine-tune on T5 text features (--init: I2I run)."}
NOT_INHERITED = ("resume", "workers")  # on --resume: the action itself, and what fits the machine (auto)
CONFIG = typer.Option(None, "--config", help="A recipe (configs/: i2i-256, t2i-256, t2i-512, t2i-1024) or a "
                      ".toml file; flags override it.")


def say(line: str) -> None:
    """A progress line on stderr, never wrapped or read as markup (paths hold brackets)."""
    err_console.print(line, markup=False, highlight=False, soft_wrap=True)


def workers_of(value) -> int | None:
    """--workers: a count, or None for auto (decided where the device is known)."""
    if value is None or value == "auto":
        return None
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise UserError(f"--workers {value}: expected a number >= 0 or auto") from None
    return count


def resolve(mode: str, given: dict, recipe: str | None) -> TrainConfig:
    """Defaults ← the resumed run's settings ← the recipe ← the flags given (None: not given)."""
    from lumos.trainer import checkpoint as ckpt

    given = {k: v for k, v in given.items() if v is not None}
    settings = read_recipe(recipe) if recipe else {}
    if settings.pop("mode", mode) != mode:
        raise UserError(f"--config {recipe} is a recipe for lumos-train {'t2i' if mode == 'i2i' else 'i2i'}")
    output = given.get("output", settings.get("output"))
    if given.get("resume") and output and ckpt.latest(output):
        saved = flat_record(ckpt.read_config(ckpt.latest(output))["train"])
        ours = {name for name, _ in option_specs(mode)}
        settings = {**{k: v for k, v in saved.items() if k in ours and k not in NOT_INHERITED}, **settings}
    settings.update(given)
    if "workers" in settings:
        settings["workers"] = workers_of(settings["workers"])
    config = TrainConfig.of(mode, **settings)
    config.recipe = recipe
    return config


def _train(mode: str, options: dict, sample_grid) -> None:
    from lumos.trainer.train import run_training

    try:
        recipe = options.pop("config")
        result = run_training(resolve(mode, options, recipe), say=say, sample_grid=sample_grid)
    except UserError as err:
        err_console.print(f"[red]error:[/red] {escape(str(err))}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if result["checkpoint"]:
        print(f"trained to step {result['steps']}; last checkpoint: {result['checkpoint']}")


def _option(name: str, f) -> tuple[type, typer.models.OptionInfo]:
    """The typer option of one setting: not given is None, so a recipe or the resumed run can fill it; the
    help shows the default."""
    flag, help = "--" + name.replace("_", "-"), f.metadata["help"]
    default = default_of(f)
    if f.type == "bool":
        if name == "resume":  # an action, not a setting
            return Optional[bool], typer.Option(None, flag, help=help, show_default=False)
        return Optional[bool], typer.Option(None, f"{flag}/--no-{flag[2:]}", help=help, show_default=False)
    kind = {"int": int, "float": float, "str": str, "int | None": int, "str | None": str}[f.type]
    if name == "workers":
        kind, default = str, "auto"
    if name in ("data", "output"):
        help += "  [required]"
    elif default not in (None, ""):
        help += f"  [default: {default}]"
    return Optional[kind], typer.Option(None, flag, help=help, show_default=False)


def _command(mode: str, sample_grid):
    """The `mode` command: its options only (typer reads them from the signature)."""

    def command(**options) -> None:
        _train(mode, options, sample_grid)

    params = [inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=CONFIG, annotation=Optional[str])]
    for name, f in option_specs(mode):
        kind, opt = _option(name, f)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=opt, annotation=kind))
    command.__signature__ = inspect.Signature(params)
    command.__doc__ = HELP[mode]
    return command


def make_app(sample_grid=None):
    """The lumos-train command; `sample_grid` draws --sample-every's pictures (lumos.trainer.held_back's
    SampleGrid). The installed command is lumos.generation.train_cli's, which passes generation's."""
    app = new_app(__doc__, group=True, no_args_is_help=True)
    for mode in BOTH:
        app.command(mode)(_command(mode, sample_grid))
    return app
