"""The architecture, enforced: every import of the package, parsed from the source, goes downward.

Layers, lowest first (a module may import its own layer and the ones below it, never one above):

    core          features, presets, model-file format, mini-batches, metrics, errors, atomic I/O
    firmware_io   audio in (files, raw/framed PCM, microphone) and event sinks
    datasets      DCASE / MIMII folder layouts, local data, downloads
    edge.runtime  model file -> scores -> windows -> events; the phi store
    edge.calibrate, then edge.finetune and edge.report   (the device's library)
    edge.cli      the device commands
    fleet         the fleet's ingest of the devices' MQTT messages and edge-fleet (next to the broker)
    train         the desktop trainer (torch)
    convert       checkpoint -> model files

On top of that: no package imports another package of its own layer, no two modules import each
other (directly or round a longer loop), and no command module imports another command module.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# folder in the repository -> package when installed (pyproject.toml's package-dir)
FOLDERS = {"core": "core", "firmware_io": "firmware_io", "datasets": "datasets", "edge": "edge",
           "fleet": "fleet", "train": "train", "convert": "convert"}
LAYERS = ["core", "firmware_io", "datasets", "edge.runtime", "edge.calibrate", "edge.finetune", "edge.report",
          "edge.evaluate", "edge.model_inspect", "edge.cli", "fleet", "train", "convert"]
# library packages of one layer that do not import each other (their rank is the same)
RANK = {name: rank for rank, name in enumerate(LAYERS)}
RANK["edge.report"] = RANK["edge.finetune"]
RANK["edge.evaluate"] = RANK["edge.finetune"]
RANK["edge.model_inspect"] = RANK["edge.finetune"]
COMMAND_MODULES = ("edge_asd.edge.cli.", "edge_asd.train.cli", "edge_asd.convert.cli", "edge_asd.datasets.cli",
                   "edge_asd.fleet.cli")


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = [FOLDERS[rel.parts[0]], *rel.parts[1:]]
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return "edge_asd." + ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for folder in FOLDERS for p in sorted((ROOT / folder).rglob("*.py"))}


def imports_of(path: Path, name: str, known: set[str]) -> set[str]:
    """The kit's modules that ``path`` imports, at any depth (lazy imports inside functions included)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" for a in node.names] + [mod]
        for t in targets:
            if not t.startswith("edge_asd."):
                continue
            while t and t not in known:  # `from pkg import name`: name may be a module or a symbol
                t = t.rpartition(".")[0]
            if t and t != name:
                found.add(t)
    return found


def layer_of(module: str) -> str:
    rest = module.removeprefix("edge_asd.")
    for layer in sorted(LAYERS, key=len, reverse=True):
        if rest == layer or rest.startswith(layer + "."):
            return layer
    if rest == "edge":
        return "edge.runtime"  # the edge package's own __init__ holds only a docstring
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS in tests/test_layers.py")


MODULES = package_modules()
GRAPH = {name: imports_of(path, name, set(MODULES)) for name, path in MODULES.items()}


def test_the_parser_sees_every_kind_of_import():
    """The checker reads top-level, lazy, relative and `from package import module` imports."""
    assert "edge_asd.core.features" in GRAPH["edge_asd.core.batches"]
    assert "edge_asd.edge.runtime.windows" in GRAPH["edge_asd.edge.cli.options"]
    assert "edge_asd.core.errors" in GRAPH["edge_asd.firmware_io.audio_file"]
    assert len(MODULES) > 60 and all(layer_of(m) for m in MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_go_downward(module):
    here = layer_of(module)
    upward = sorted(t for t in GRAPH[module] if RANK[layer_of(t)] > RANK[here]
                    or (RANK[layer_of(t)] == RANK[here] and layer_of(t) != here))
    assert not upward, f"{module} ({here}) imports from a higher or sibling layer: {upward}"


def test_core_imports_nothing_else_of_the_kit():
    for module, targets in GRAPH.items():
        if layer_of(module) == "core":
            assert all(layer_of(t) == "core" for t in targets), (module, targets)


def test_commands_never_import_each_other():
    for module, targets in GRAPH.items():
        if module.startswith(COMMAND_MODULES):
            others = [t for t in targets if t.startswith(COMMAND_MODULES) and t != "edge_asd.edge.cli.options"
                      and t != "edge_asd.edge.cli"]
            assert not others, f"{module} imports another command: {others}"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan), each a list of names."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_module_cycles():
    # a package's __init__ importing its own modules is not a cycle of the architecture
    graph = {m: {t for t in ts if not (MODULES[t].name == "__init__.py" and m.startswith(t + "."))}
             for m, ts in GRAPH.items()}
    assert cycles(graph) == []


def test_no_package_cycles():
    graph: dict[str, set[str]] = {}
    for module, targets in GRAPH.items():
        graph.setdefault(layer_of(module), set()).update(layer_of(t) for t in targets if layer_of(t) != layer_of(module))
    assert cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
