"""Every command's --help reads whole at 80 columns (no description cut with "…", no line over 80, no
metavar on a flag), each lumos-train mode lists only its own options, and every command has --version."""

import pytest
import typer
from typer.testing import CliRunner

from lumos.curation.cli import app as curate
from lumos.generation.eval_cli import app as evaluate
from lumos.generation.export import app as export
from lumos.generation.sample_cli import app as sample
from lumos.generation.train_cli import app as train
from lumos.pipeline.cli import app as encode

APPS = {"lumos-curate": curate, "lumos-encode": encode, "lumos-train": train, "lumos-sample": sample,
        "lumos-export": export, "lumos-eval": evaluate}


def _helps():
    """(name, argv) of every command and subcommand's --help."""
    for name, app in APPS.items():
        yield name, ["--help"]
        command = typer.main.get_command(app)
        for sub in getattr(command, "commands", {}):
            yield f"{name} {sub}", [sub, "--help"]


def _invoke(app, argv):
    return CliRunner().invoke(app, argv, env={"COLUMNS": "80", "TERM": "xterm-256color"}, prog_name="lumos")


@pytest.mark.parametrize("name,argv", list(_helps()), ids=[n for n, _ in _helps()])
def test_help_reads_whole_at_80_columns(name, argv):
    result = _invoke(APPS[name.split()[0]], argv)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) > 3
    assert not [x for x in lines if "…" in x or len(x) > 80], name
    assert "<bool>" not in result.output and "╭" not in result.output
    if len(argv) == 1 and hasattr(typer.main.get_command(APPS[name]), "commands"):
        listed = [x for x in lines if x.startswith("  ") and not x.strip().startswith("-")]
        assert not [x for x in listed if x.endswith("...")], listed  # a subcommand's one-line summary is whole


def test_each_training_mode_lists_only_its_own_options():
    i2i, t2i = (_invoke(train, [mode, "--help"]).output for mode in ("i2i", "t2i"))
    assert all(f in i2i for f in ("--condition", "--init")) and not any(f in i2i for f in ("--text ", "--caption"))
    assert all(f in t2i for f in ("--text ", "--caption", "--init")) and "--condition" not in t2i


@pytest.mark.parametrize("name", APPS)
def test_every_command_has_version(name):
    result = _invoke(APPS[name], ["--version"])
    assert result.exit_code == 0 and result.output.startswith("lumos "), result.output
