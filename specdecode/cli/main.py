"""The `specdecode` command line.

Each command body runs through `run_command`, which turns a SpecDecodeError into its message on
stderr and exit code 1; `main()` does the same for anything that escapes a command.
"""

from __future__ import annotations

import sys
from pathlib import Path
from collections.abc import Callable
from typing import Optional, TypeVar

import typer

from ..errors import SpecDecodeError

T = TypeVar("T")

app = typer.Typer(
    help="Lossless speculative decoding for transformers causal LMs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
models_app = typer.Typer(help="The offline model zoo: list and pull models.", no_args_is_help=True)
app.add_typer(models_app, name="models")
index_app = typer.Typer(help="Datastores for RAG: build and inspect.", no_args_is_help=True)
app.add_typer(index_app, name="index")


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
    from ..models import zoo
    from ..runtime.machine import specdecode_home

    def body() -> None:
        rows = [("NAME", "DESCRIPTION", "SIZE", "STATUS")]
        rows += [(s.entry.name, s.entry.description, s.entry.size, s.status) for s in zoo.list_models()]
        widths = [max(len(row[i]) for row in rows) for i in range(3)]
        for row in rows:
            typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)) + "  " + row[3])
        typer.echo(f"\ncache: {specdecode_home()}  (set SPECDECODE_HOME to move it)")

    run_command(body)


@models_app.command("pull")
def models_pull(
    name: str = typer.Argument(..., help="A zoo model name (see `specdecode models list`)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Install a zoo model's packages and convert it once into the cache."""
    from ..models import zoo

    path = run_command(lambda: zoo.pull(name, progress=not quiet))
    typer.echo(f"{name} is ready: {path}")


@app.command("generate")
def generate(
    prompt: str = typer.Argument(..., help="The prompt text, or - to read it from standard input."),
    model: str = typer.Option(..., "--model", "-m",
                              help="Target model: zoo name, model folder, .gguf file or hub id."),
    drafter: str = typer.Option("lookup", "--drafter", "-d",
                                help="none | lookup | retrieval | model:NAME (NAME: any --model spec); A+B merges two drafters."),
    k: Optional[int] = typer.Option(None, "--k", help="Draft length (depth); omitted = adaptive."),
    tree_width: int = typer.Option(1, "--tree-width", help="Tree width: lookup matches or model top-w (1 = a chain)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="At most this many new tokens."),
    temperature: float = typer.Option(0.0, "--temperature", "-t", help="0 = greedy decoding."),
    top_p: float = typer.Option(1.0, "--top-p", help="Nucleus sampling mass (1 = off)."),
    top_k: int = typer.Option(0, "--top-k", help="Top-k sampling (0 = off)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Random seed for sampling."),
    stop: Optional[list[str]] = typer.Option(None, "--stop", help="Stop string (repeatable)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto | bf16 | fp32 (auto: bf16 where the CPU has it)."),
    quantize: Optional[str] = typer.Option(None, "--quantize",
                                           help="Quantized target on CPU: int8 | int4 (weight-only) | fp16 (fp16 "
                                                "weights) | w8a8 (int8 weights and activations); see README."),
    drafter_quantize: str = typer.Option("auto", "--drafter-quantize",
                                         help="A model drafter's weights: auto (w8a8 where measured clearly "
                                              "faster here) | none | int8 | int4 | fp16 | w8a8."),
    drafter_dtype: str = typer.Option("fast-decode", "--drafter-dtype",
                                      help="Model drafter dtype: fast-decode (measured fastest one-token "
                                           "forward here) | auto | bf16 | fp32."),
    raw: bool = typer.Option(False, "--raw", help="Tokenise the prompt as is (no chat template)."),
    cost_model: bool = typer.Option(True, "--cost-model/--no-cost-model",
                                    help="Size drafts with the measured cost model (default; see README) or "
                                         "let the drafter alone decide."),
    attention: str = typer.Option("auto", "--attention", help="Attention backend: auto | sdpa | flash | graphs | graphs:WIDTH (graphs: static steps recorded as CUDA graphs on a GPU; docs/gpu.md)."),
    compare: bool = typer.Option(False, "--compare", help="Also run plain decoding; print speed and exactness."),
    stream: bool = typer.Option(True, "--stream/--no-stream", help="Print text as it is generated."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of text."),
) -> None:
    """Generate text with speculative decoding (and compare it with plain decoding)."""
    from .generate import GenerateConfig, run_generate

    def body() -> None:
        config = GenerateConfig(
            model=model, drafter=drafter, k=k, tree_width=tree_width, max_new_tokens=max_new_tokens,
            temperature=temperature, top_p=top_p, top_k=top_k, seed=seed, stop=tuple(stop or ()),
            dtype=dtype, quantize=quantize, drafter_dtype=drafter_dtype, drafter_quantize=_no_none(drafter_quantize),
            raw=raw, compare=compare,
            cost_model=cost_model, attention=attention,
            stream=stream and not compare and not as_json,
            as_json=as_json,
        )
        run_generate(config, read_prompt(prompt), out=lambda text: typer.echo(text, nl=False),
                     err=lambda text: typer.echo(text, nl=False, err=True))

    run_command(body)


@index_app.command("build")
def index_build(
    paths: list[str] = typer.Argument(..., help="Files and folders to index (text files: .txt, .md, .rst, .py, ...)."),
    out: Path = typer.Option(..., "--out", "-o", help="The datastore folder to write."),
    embedder: Optional[str] = typer.Option(None, "--embedder",
                                           help="sentence-transformers name or folder (default all-MiniLM-L6-v2)."),
    chunk_tokens: int = typer.Option(200, "--chunk-tokens", help="Passage size in embedder tokens."),
    overlap: int = typer.Option(32, "--overlap", help="Tokens shared by consecutive passages."),
    index: str = typer.Option("flat", "--index", help="flat (exact) | hnsw | ivf."),
    nlist: Optional[int] = typer.Option(None, "--nlist", help="ivf: number of lists (default sqrt of passages)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Index documents into a FAISS datastore (saved atomically)."""
    from .rag import run_index_build

    run_command(lambda: run_index_build(paths, out, embedder=embedder, chunk_tokens=chunk_tokens, overlap=overlap,
                                        index=index, nlist=nlist, progress=not quiet, write=echo))


@index_app.command("pydoc")
def index_pydoc(
    out: Path = typer.Option(..., "--out", "-o", help="The datastore folder to write."),
    chunk_tokens: int = typer.Option(200, "--chunk-tokens", help="Passage size in embedder tokens."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Index the Python standard library's documentation (rendered by pydoc): a corpus every machine has."""
    from .rag import run_index_build
    from ..retrieval.corpora import write_python_docs

    def body() -> None:
        texts = out.parent / (out.name + "-texts")
        files = write_python_docs(texts)
        echo(f"rendered the pydoc text of {len(files)} standard-library modules into {texts}\n")
        run_index_build([str(texts)], out, embedder=None, chunk_tokens=chunk_tokens, overlap=32, index="flat",
                        nlist=None, progress=not quiet, write=echo)

    run_command(body)


@index_app.command("info")
def index_info(store: Path = typer.Argument(..., help="A datastore folder.")) -> None:
    """Show a datastore's manifest."""
    from .rag import run_index_info

    run_command(lambda: run_index_info(store, write=echo))


@app.command("ask")
def ask(
    question: str = typer.Argument(..., help="The question, or - to read it from standard input."),
    store: Path = typer.Option(..., "--store", "-s", help="A datastore folder (`specdecode index build`)."),
    model: str = typer.Option(..., "--model", "-m", help="Target model: zoo name, folder, .gguf file or hub id."),
    drafter: str = typer.Option("auto", "--drafter", "-d",
                                help="auto (retrieval drafting) | none | any drafter name, e.g. retrieval+model:NAME."),
    draft_model: Optional[str] = typer.Option(None, "--draft-model",
                                              help="With --drafter auto: also draft with this small model."),
    k: int = typer.Option(4, "--k", help="Passages to retrieve."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", "-n"),
    dtype: str = typer.Option("auto", "--dtype", help="auto | bf16 | fp32."),
    compare: bool = typer.Option(False, "--compare", help="Also answer with plain decoding: speedup, identical."),
) -> None:
    """Answer a question from a datastore with speculative decoding; print the sources."""
    from .rag import AskConfig, run_ask

    config = AskConfig(store=store, model=model, question=read_prompt(question), drafter=drafter,
                       draft_model=draft_model, k=k, max_new_tokens=max_new_tokens, dtype=dtype, compare=compare)
    run_command(lambda: run_ask(config, write=echo))


@app.command("summarize")
def summarize(
    files: list[str] = typer.Argument(..., help="Text, Markdown or HTML files, summarized together; - reads "
                                                "the text from standard input."),
    model: str = typer.Option(..., "--model", "-m", help="Target model: zoo name, folder, .gguf file or hub id."),
    drafter: str = typer.Option("auto", "--drafter", "-d",
                                help="auto (prompt lookup + self-drafting: lookup+self) | none | any drafter name, "
                                     "e.g. lookup or lookup+model:NAME."),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", "-n", help="At most this many tokens per summary."),
    instruction: Optional[str] = typer.Option(None, "--instruction", "-i",
                                              help="What the summary should be (length, style); default: a few "
                                                   "paragraphs."),
    split: bool = typer.Option(True, "--split/--no-split",
                               help="Summarize a document too long for one prompt in parts, then the part summaries "
                                    "together (default), or refuse it."),
    max_prompt_tokens: Optional[int] = typer.Option(None, "--max-prompt-tokens",
                                                    help="Prompts of at most this many tokens (default: the "
                                                         "model's context minus --max-new-tokens)."),
    dtype: str = typer.Option("auto", "--dtype", help="auto | bf16 | fp32."),
    compare: bool = typer.Option(False, "--compare", help="Also summarize with plain decoding: speedup, identical."),
    stream: bool = typer.Option(False, "--stream", help="Print the final summary as it is generated."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar over the parts."),
) -> None:
    """Summarize long documents with speculative decoding (in parts when they do not fit one prompt)."""
    from .summarize import SummarizeConfig, run_summarize

    source = read_prompt("-") if files == ["-"] else tuple(Path(f) for f in files)
    config = SummarizeConfig(source=source, model=model, drafter=drafter, max_new_tokens=max_new_tokens,
                             instruction=instruction, split=split, max_prompt_tokens=max_prompt_tokens, dtype=dtype,
                             compare=compare, stream=stream and not compare, progress=not quiet)
    run_command(lambda: run_summarize(config, write=echo))


@app.command("caption")
def caption(
    images: list[str] = typer.Argument(..., help="Image files, folders (their images) or glob patterns."),
    model: str = typer.Option(..., "--model", "-m", help="A vision-language model: a folder, a hub id (LLaVA, Qwen2-VL, Qwen2.5-VL, "
                              "Idefics3, SmolVLM) or stand-in:NAME (timings only)."),
    drafter: str = typer.Option("auto", "--drafter", "-d", help="auto (lookup, merged with the zoo's 0.5B where it "
                                                                "shares the VLM's vocabulary) | none | any drafter name, "
                                                                "e.g. model:NAME: a text LM or a VLM of the family."),
    prompt: Optional[str] = typer.Option(None, "--prompt", "-p", help="What to ask of each image (default: "
                                                                      "Describe this image.)."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="At most this many tokens per caption."),
    dtype: str = typer.Option("auto", "--dtype", help="auto | bf16 | fp32."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Also write the captions to this .jsonl or .csv file."),
    compare: bool = typer.Option(False, "--compare", help="Also caption with plain decoding: speedup, identical."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar over the images."),
) -> None:
    """Caption images with a vision-language model and speculative decoding."""
    from .caption import CaptionConfig, run_caption

    config = CaptionConfig(images=tuple(images), model=model, drafter=drafter, prompt=prompt,
                           max_new_tokens=max_new_tokens, dtype=dtype, out=out, compare=compare, progress=not quiet)
    run_command(lambda: run_caption(config, write=echo))


def echo(text: str) -> None:
    typer.echo(text, nl=False)


@app.command("bench")
def bench(
    questions: Path = typer.Option(..., "--questions", "-q", help="A Spec-Bench question.jsonl file."),
    model: str = typer.Option(..., "--model", "-m", help="Target model: zoo name, folder, .gguf file or hub id; "
                                                          "for image questions a VLM or stand-in:NAME."),
    out: Path = typer.Option(..., "--out", "-o", help="Results folder (rerun with the same folder to resume)."),
    methods: str = typer.Option("plain,lookup", "--methods",
                                help="Comma-separated: plain, lookup, retrieval, model:NAME, A+B mixtures, hf-plain, "
                                     "hf-static, hf-assisted:NAME, hf-lookup, llama-cpp (plain is always measured: "
                                     "speedups are relative to it)."),
    categories: Optional[str] = typer.Option(None, "--categories", help="Comma-separated categories (default all)."),
    limit_per_category: Optional[int] = typer.Option(None, "--limit-per-category",
                                                     help="The first N questions of each category."),
    max_new_tokens: int = typer.Option(128, "--max-new-tokens", "-n", help="Per turn (Spec-Bench uses 1024)."),
    dtype: str = typer.Option("auto", "--dtype", help="Target dtype: auto | bf16 | fp32."),
    quantize: Optional[str] = typer.Option(None, "--quantize",
                                           help="Quantized target on CPU: int8 | int4 | fp16 | w8a8 (see README)."),
    drafter_quantize: str = typer.Option("auto", "--drafter-quantize",
                                         help="Weights of our drafter models and HF's assistants: auto (w8a8 "
                                              "where measured clearly faster here) | none | int8 | int4 | fp16 | w8a8."),
    drafter_dtype: str = typer.Option("fast-decode", "--drafter-dtype",
                                      help="Dtype of our drafter models (fast-decode | auto | bf16 | fp32); "
                                           "hf-assisted loads its assistant in the target's dtype (fp32 with FBGEMM "
                                           "weights such as w8a8)."),
    k: Optional[int] = typer.Option(None, "--k", help="Draft length of our drafters (omitted = adaptive)."),
    tree_width: int = typer.Option(1, "--tree-width", help="Tree width of our drafters (1 = a chain)."),
    warmup: int = typer.Option(1, "--warmup", help="Untimed warm-up generations per method."),
    fresh: bool = typer.Option(False, "--fresh", help="Delete the results already in --out first."),
    store: Optional[Path] = typer.Option(None, "--store",
                                         help="Ask each question over this datastore (`index build`): RAG prompts "
                                              "as `ask` builds them, passages handed to the drafters."),
    rag_k: int = typer.Option(4, "--rag-k", help="Passages retrieved per question with --store."),
    cost_model: bool = typer.Option(True, "--cost-model/--no-cost-model",
                                    help="Size our drafts with the measured cost model (default) or let the "
                                         "drafters alone decide."),
    attention: str = typer.Option("auto", "--attention", help="Attention backend: auto | sdpa | flash | graphs | graphs:WIDTH (graphs: static steps recorded as CUDA graphs on a GPU; docs/gpu.md)."),
    quiet: bool = typer.Option(False, "--quiet", help="No progress bar."),
) -> None:
    """Benchmark methods on Spec-Bench questions: speedup, tau, exactness; reports and plots in --out."""

    def body() -> None:
        from ..bench import BenchConfig, run_benchmark
        from .generate import hide_loading_bars
        from ..bench.metrics import OVERALL, summarize
        from ..bench.report import table_lines

        config = BenchConfig(
            questions=questions, model=model, out=out, methods=methods,
            categories=tuple(c.strip() for c in (categories or "").split(",") if c.strip()),
            limit_per_category=limit_per_category, max_new_tokens=max_new_tokens, dtype=dtype, quantize=quantize,
            drafter_dtype=drafter_dtype, drafter_quantize=_no_none(drafter_quantize), k=k, tree_width=tree_width,
            warmup=warmup,
            fresh=fresh, store=store, rag_k=rag_k,
            cost_model=cost_model, attention=attention,
        )
        hide_loading_bars()
        run = run_benchmark(config, progress=None if quiet else progress_bar)
        rows = summarize(run.folder.records, list(dict.fromkeys(r["method"] for r in run.folder.records)))
        typer.echo("\n".join(table_lines(rows.get(OVERALL, []))))
        typer.echo(f"\n{run.measured} runs measured now; reports in {out}/ (report.md, summary.json, "
                   "results.jsonl, speedup.png, acceptance.png)")
        if run.interrupted:
            typer.echo("interrupted: rerun the same command to resume where it stopped.", err=True)
            raise typer.Exit(code=130)

    run_command(body)


@app.command("profile")
def profile(
    model: str = typer.Option(..., "--model", "-m", help="Model: zoo name, folder, .gguf file or hub id."),
    dtype: str = typer.Option("auto", "--dtype", help="auto | bf16 | fp32."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="int8 | int4 | fp16 | w8a8 (CPU)."),
    sizes: str = typer.Option("1,2,4,8,16,32,64", "--sizes", help="Comma-separated tokens fed per forward."),
    context: int = typer.Option(512, "--context", help="Tokens already in the cache."),
    rounds: int = typer.Option(3, "--rounds", help="Timed rounds over all sizes (the median counts)."),
    attention: str = typer.Option("auto", "--attention", help="Backend the forwards run through: auto | sdpa | "
                                                             "flash | graphs | graphs:WIDTH."),
) -> None:
    """What calibration chose for a model on this machine, and its forward cost vs tokens fed."""

    def body() -> None:
        from .generate import hide_loading_bars
        from .profile import ProfileConfig, run_profile

        try:
            parsed = tuple(int(s) for s in sizes.split(",") if s.strip())
        except ValueError:
            raise SpecDecodeError(f"--sizes must be whole numbers separated by commas, got {sizes!r}.") from None
        hide_loading_bars()
        run_profile(ProfileConfig(model, dtype, quantize, parsed, context, rounds, attention), echo)

    run_command(body)


def progress_bar(total: int):
    from tqdm import tqdm

    return tqdm(total=total, unit="run", desc="bench", dynamic_ncols=True)


def _no_none(option: str) -> str | None:
    """A CLI choice where "none" means None (e.g. --drafter-quantize none: the drafter as published)."""
    return None if option.lower() == "none" else option


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
