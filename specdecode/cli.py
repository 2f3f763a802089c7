"""The `specdecode` command line.

Each command body runs through `run_command`, which turns a SpecDecodeError into its message on
stderr and exit code 1; `main()` does the same for anything that escapes a command.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Optional, TypeVar

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


@app.command("generate")
def generate(
    prompt: str = typer.Argument(..., help="The prompt text, or - to read it from standard input."),
    model: str = typer.Option(..., "--model", "-m",
                              help="Target model: zoo name, model folder, .gguf file or hub id."),
    drafter: str = typer.Option("lookup", "--drafter", "-d",
                                help="none | lookup | model:NAME (NAME: any --model spec)."),
    k: Optional[int] = typer.Option(None, "--k", help="Draft length (depth); omitted = adaptive."),
    tree: int = typer.Option(1, "--tree", help="Tree width: lookup branches or model top-w (1 = a chain)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="At most this many new tokens."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy decoding."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (1 = off)."),
    top_k: int = typer.Option(0, "--top-k", help="Top-k sampling (0 = off)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed for sampling."),
    stop: Optional[list[str]] = typer.Option(None, "--stop", help="Stop string (repeatable)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto | bf16 | fp32 (auto: bf16 where the CPU has it)."),
    drafter_dtype: str = typer.Option("fast-decode", "--drafter-dtype",
                                      help="Model drafter dtype: fast-decode (measured fastest one-token "
                                           "forward here) | auto | bf16 | fp32."),
    raw: bool = typer.Option(False, "--raw", help="Tokenise the prompt as is (no chat template)."),
    compare: bool = typer.Option(False, "--compare", help="Also run plain decoding; print speed and exactness."),
    stream: bool = typer.Option(True, "--stream/--no-stream", help="Print text as it is generated."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Generate text with speculative decoding (and compare it with plain decoding)."""
    from .cli_generate import GenerateConfig, run_generate

    def body() -> None:
        config = GenerateConfig(
            model=model, drafter=drafter, k=k, tree=tree, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, stop=tuple(stop or ()),
            dtype=dtype, drafter_dtype=drafter_dtype, raw=raw, compare=compare,
            stream=stream and not compare and not as_json,
            as_json=as_json,
        )
        run_generate(config, read_prompt(prompt), out=lambda text: typer.echo(text, nl=False),
                     err=lambda text: typer.echo(text, nl=False, err=True))

    run_command(body)


def read_prompt(prompt: str) -> str:
    """The PROMPT argument, or standard input when it is `-`."""
    return sys.stdin.read() if prompt == "-" else prompt


def main() -> None:
    """Entry point of the `specdecode` script."""
    try:
        app()
    except SpecDecodeError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
