"""The `specdecode` command line.

Each command body runs through `run_command`, which turns a SpecDecodeError into its message on
stderr and exit code 1; `main()` does the same for anything that escapes a command.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TypeVar

import typer

from .errors import SpecDecodeError

T = TypeVar("T")

app = typer.Typer(
    help="Lossless speculative decoding for transformers causal LMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="The offline model zoo: list and pull models.", no_args_is_help=True)
app.add_typer(models_app, name="models")


def run_command(body: Callable[[], T]) -> T:
    """Run a command body; a SpecDecodeError becomes `error: <message>` on stderr and exit code 1."""
    try:
        return body()
    except SpecDecodeError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(code=1) from None


@models_app.command("list")
def models_list() -> None:
    """List the zoo models with their size and status on this machine."""
    from . import zoo

    def body() -> None:
        rows = [("NAME", "DESCRIPTION", "SIZE", "STATUS")]
        rows += [(s.entry.name, s.entry.description, s.entry.size, s.status) for s in zoo.list_models()]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        for row in rows:
            typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3])
        typer.echo(f"\ncache: {zoo.zoo_home()}  (set SPECDECODE_HOME to move it)")

    run_command(body)


@models_app.command("pull")
def models_pull(
    name: str = typer.Argument(..., help="A zoo model name (see `specdecode models list`)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Install a zoo model's packages and convert it once into the cache."""
    from . import zoo

    path = run_command(lambda: zoo.pull(name, progress=not quiet))
    typer.echo(f"{name} is ready: {path}")


def main() -> None:
    """Entry point of the `specdecode` script."""
    try:
        app()
    except SpecDecodeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
