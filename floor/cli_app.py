"""What every lumos command line shares: plain help that wraps at any terminal width (click's formatter: no
boxes that cut descriptions at 80 columns, no metavar on a flag), and `--version`."""

from __future__ import annotations

from importlib import metadata

import typer


def version() -> str:
    try:
        return metadata.version("lumos")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"lumos {version()}")
        raise typer.Exit()


# A command's or a group callback's `version: bool = VERSION`: prints the version and exits before the rest.
VERSION = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                       help="Print the version and exit.")


def new_app(doc: str, group: bool = False, **kw) -> typer.Typer:
    """A Typer app with lumos's help style; `group`: subcommands, with `--version` on the group itself (a
    single-command app takes VERSION among its own options instead)."""
    app = typer.Typer(add_completion=False, rich_markup_mode=None, help=doc, **kw)
    if group:
        @app.callback()
        def _group(version: bool = VERSION) -> None:
            del version  # handled by its callback

    return app
