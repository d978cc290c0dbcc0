"""The package is layered: every module imports only from its own layer or those below, with no cycles.

Imports are read with ``ast`` from every module, function-level ones included, so a lazy
import cannot hide an upward dependency or a cycle.
"""

import ast
import pathlib

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / "effnet_jax"

# Lowest first. A module belongs to the longest prefix that matches its dotted name.
LAYERS = [
    (
        "effnet_jax.labels",
        "effnet_jax.compilation_cache",
        "effnet_jax.host_memory",
        "effnet_jax.limits",
        "effnet_jax.output_files",
        "effnet_jax.progress",
        "effnet_jax.zip_directory",
    ),
    ("effnet_jax.metrics",),  # the metric math: labels and probabilities in, numbers out
    ("effnet_jax.models",),
    ("effnet_jax.weights",),
    ("effnet_jax.factory", "effnet_jax"),  # the package root re-exports factory and models
    ("effnet_jax.runs",),  # the run directory: its files, checkpoints, and the Run value
    ("effnet_jax.data",),
    ("effnet_jax.data.eda",),
    ("effnet_jax.serving",),  # an exported model, run with jax + the image readers of data
    ("effnet_jax.reporting.plots",),  # pictures of predictions, drawn by evaluation
    ("effnet_jax.train",),
    ("effnet_jax.inference",),
    ("effnet_jax.reporting",),  # model cards and run summaries read what evaluation wrote
    ("effnet_jax.server",),  # effnet-serve: an exported model behind HTTP, Grad-CAM overlays, the model card's note
    ("effnet_jax.experiment",),  # train, calibrate, describe: the library behind effnet-train
    ("effnet_jax.sweep",),  # a grid of experiments, each trained and scored: the library behind effnet-sweep
    ("effnet_jax.cli",),
]


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def layer_of(name: str) -> int:
    best, rank = -1, None
    for i, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and len(prefix) > best:
                best, rank = len(prefix), i
    assert rank is not None, f"{name} is in no layer; add it to LAYERS"
    return rank


def _resolve(name: str) -> str:
    """The project module an imported name refers to (``effnet_jax.data.pipeline.create_split`` -> the module)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


def project_imports(name: str) -> set[str]:
    """Project modules ``name`` imports, at any depth of its code."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{a.name}" for a in node.names] + [base]
        else:
            continue
        for target in targets:
            if target == "effnet_jax" or target.startswith("effnet_jax."):
                resolved = _resolve(target)
                if resolved and resolved != name:
                    found.add(resolved)
    return found


GRAPH = {name: project_imports(name) for name in MODULES}


def test_every_module_has_a_layer():
    for name in MODULES:
        layer_of(name)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_upward_import(name):
    upward = sorted(t for t in GRAPH[name] if layer_of(t) > layer_of(name))
    assert not upward, f"{name} (layer {LAYERS[layer_of(name)][0]}) imports from higher layers: {upward}"


def _is_ancestor_package(a: str, b: str) -> bool:
    return b.startswith(a + ".")


def test_no_import_cycle():
    # A package's __init__ importing its own submodules is not a cycle (Python runs it first).
    edges = {n: {t for t in ts if not _is_ancestor_package(t, n)} for n, ts in GRAPH.items()}
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for t in sorted(edges[n]):
            if state.get(t) == "open":
                cycle = stack[stack.index(t) :] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[n] = "done"

    for n in sorted(edges):
        if n not in state:
            visit(n)


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    source = "def f():\n    from effnet_jax.train import loop\n"
    tree = ast.parse(source)
    names = [n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert names == ["effnet_jax.train"]
    assert layer_of("effnet_jax.train.loop") > layer_of("effnet_jax.data.pipeline")
    assert layer_of("effnet_jax.data.eda.scan") > layer_of("effnet_jax.data.exclusions")


def test_no_private_jax_imports():
    root = PACKAGE.parent
    offenders = []
    for path in sorted(
        list(PACKAGE.rglob("*.py"))
        + list((root / "tests").glob("*.py"))
        + list((root / "benchmarks").glob("*.py"))
        + list((root / "configs").glob("*.py"))
    ):
        for node in ast.walk(ast.parse(path.read_text())):
            mods = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            offenders += [f"{path.relative_to(root)}: {m}" for m in mods if m.startswith("jax._src")]
    assert not offenders


def test_inference_reads_runs_not_the_trainer():
    # A run is read through effnet_jax.runs (runs.open -> Run); nothing in inference reaches into train/.
    offenders = {
        name: sorted(t for t in GRAPH[name] if t.startswith("effnet_jax.train"))
        for name in MODULES
        if name.startswith("effnet_jax.inference")
    }
    assert not {name: found for name, found in offenders.items() if found}


def test_docs_layout_names_every_module_and_only_modules_that_exist():
    # docs/layout.md is the map a newcomer reads: a module missing from it is invisible there.
    import re

    layout = (PACKAGE.parent / "docs" / "layout.md").read_text()
    named = set(re.findall(r"^(effnet_jax/[\w/]+(?:\.py|/))\s", layout, re.MULTILINE))
    stale = sorted(p for p in named if not (PACKAGE.parent / p).exists())
    modules = sorted(
        str(path.relative_to(PACKAGE.parent))
        for path in PACKAGE.rglob("*.py")
        if path.name != "__init__.py" and "sample" not in path.parts
    )
    unnamed = [m for m in modules if m not in named and not any(m.startswith(p) for p in named if p.endswith("/"))]
    assert (stale, unnamed) == ([], [])
