"""The package's layers (docs/architecture.md): every import runs downward, the algorithm never reaches
into the CPU machinery, drafters and verifiers meet only in the engine, and modules stay readable."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "specdecode"

# Lowest first; a module may import its own layer or any layer below it. The model loader chooses the
# CPU machinery, so models sits above runtime.
LAYERS = [
    ("basics", ("errors", "files", "outputs", "sampling", "prompts", "tree")),
    ("runtime", ("runtime",)),
    ("models", ("models",)),
    ("policy", ("policy",)),
    ("drafters, verifiers", ("drafters", "verifiers")),
    ("engine", ("engine",)),
    ("retrieval", ("retrieval", "multimodal")),
    ("pipelines", ("pipelines",)),
    ("bench", ("bench",)),
    ("cli", ("cli",)),
]
ALGORITHM = ("engine", "tree", "policy", "drafters", "verifiers")
MAX_LINES = 400
LONGER = {"specdecode.models.zoo": "the zoo's table of offline weights with the code that assembles them"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top(module: str) -> str:
    """specdecode.runtime.cpu.linear -> runtime."""
    return module.split(".")[1] if module.count(".") else ""


def rank(module: str) -> int | None:
    for index, (_, members) in enumerate(LAYERS):
        if top(module) in members:
            return index
    return None


def imports(path: Path, source: str | None = None) -> list[str]:
    """The package modules a file (or `source` as if it were that file) imports (relative imports resolved;
    `from . import x` names x)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(source if source is not None else path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.startswith("specdecode"):
                # `from x import name`: name may be a module of package x (from . import zoo)
                found += [f"{target}.{alias.name}" if _is_module(f"{target}.{alias.name}") else target
                          for alias in node.names]
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name.startswith("specdecode")]
    return found


def _is_module(name: str) -> bool:
    path = PACKAGE.parent.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def package_files() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_module_belongs_to_a_layer():
    assert [module_name(p) for p in package_files() if rank(module_name(p)) is None] == []


def test_imports_run_downward_only():
    upward = []
    for path in package_files():
        here = module_name(path)
        for target in imports(path):
            if rank(target) is not None and rank(target) > rank(here):
                upward.append(f"{here} imports {target}")
    assert upward == []


def test_the_algorithm_never_imports_the_cpu_machinery_and_drafters_never_meet_verifiers():
    wrong = []
    for path in package_files():
        here = module_name(path)
        for target in imports(path):
            if top(here) in ALGORITHM and target.startswith(("specdecode.runtime.cpu", "specdecode.runtime.cuda")):
                wrong.append(f"{here} imports {target}")
            if {top(here), top(target)} == {"drafters", "verifiers"}:
                wrong.append(f"{here} imports {target}")
    assert wrong == []


def test_the_layer_check_sees_an_upward_import():
    """The checks above are not vacuous: a runtime module importing the engine, or a drafter the CPU
    machinery, is seen with the name it resolves to."""
    cache = PACKAGE / "runtime" / "cache.py"
    found = imports(cache, "from ..engine import SpeculativeGenerator\nfrom . import runner\n")
    assert found == ["specdecode.engine", "specdecode.runtime.runner"]
    assert rank("specdecode.engine") > rank("specdecode.runtime.cache")
    assert imports(PACKAGE / "drafters" / "model.py", "from ..runtime.cpu import linear") == [
        "specdecode.runtime.cpu.linear"]


def test_modules_stay_readable():
    long = [f"{module_name(p)}: {n} lines" for p in package_files()
            if (n := len(p.read_text().splitlines())) > MAX_LINES and module_name(p) not in LONGER]
    assert long == []
