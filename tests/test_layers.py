"""The package's layers only point down, test doubles stay out of the library, and imports form no cycle.

Every ``import`` statement of every library module is read from the source (module level and inside
functions alike, so a "lazy" import counts too) and checked against the layer map of docs/architecture.md, layers:

    0  promptr1.registry, promptr1.config, promptr1.plugins, promptr1.tags, promptr1.fileio
    1  promptr1.rewards, promptr1.llm_backends           (never import envs, agents, evaluation)
    2  promptr1.envs                                      (never imports agents or evaluation)
    3  promptr1.agents                                    (training; never imports evaluation)
    4  promptr1.evaluation                                (may use the rollout and model loading of agents)
       promptr1.integrations                              (TRL/verl adapters over the env and the rollout)
    5  promptr1.pipeline, promptr1.cli, promptr1.play     (the commands, above both wings)
       promptr1 (the package root: wires the layers together, registering the env and the synthetic world's
       env LLM; no library module imports it)

A lazy registry entry (a ``"promptr1.module:attribute"`` string) counts as an import of that module, so a registry
cannot hide an upward dependency; and the two packages of layer 1 (rewards, llm_backends) and of layer 4
(evaluation, integrations) never reference each other. ``promptr1.testing`` (the tiny model, the fake server,
scripted backends and agents) may import anything, registers its doubles itself when imported, and no library
module imports or names it.
"""

from __future__ import annotations

import ast
import pathlib
import re

import pytest

import promptr1

ROOT = pathlib.Path(promptr1.__file__).resolve().parent.parent
LAZY_REF = re.compile(r"^promptr1(\.[A-Za-z_][A-Za-z0-9_]*)+:[A-Za-z_][A-Za-z0-9_]*$")
FOLDERS = {"promptr1": "promptr1", "envs": "promptr1.envs", "agents": "promptr1.agents",
           "evaluation": "promptr1.evaluation", "rewards": "promptr1.rewards",
           "llm_backends": "promptr1.llm_backends", "commands": "promptr1.commands"}
LEVELS = [
    ("promptr1.testing", None),
    ("promptr1.rewards", 1), ("promptr1.llm_backends", 1),
    ("promptr1.envs", 2), ("promptr1.agents", 3), ("promptr1.evaluation", 4), ("promptr1.integrations", 4),
    ("promptr1.pipeline", 5), ("promptr1.commands", 5), ("promptr1.cli", 5), ("promptr1.play", 5),
    ("promptr1.registry", 0), ("promptr1.config", 0), ("promptr1.plugins", 0), ("promptr1.tags", 0),
    ("promptr1.fileio", 0),
]


def _modules() -> dict[str, pathlib.Path]:
    out = {}
    for folder, package in FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            rel = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in rel.parts if p != "__init__"]
            out[".".join([package, *parts])] = path
    return out


MODULES = _modules()


def _level(module: str) -> int | None:
    for prefix, level in LEVELS:
        if module == prefix or module.startswith(prefix + "."):
            return level
    if module == "promptr1":
        return 5
    raise AssertionError(f"{module} is in no layer; add it to LEVELS in tests/test_layers.py")


def _imports(module: str, path: pathlib.Path, lazy: bool = True) -> set[str]:
    """Project modules imported by ``module`` (absolute, resolved from relative imports), and with ``lazy`` the
    modules its lazy registry entries name (a dependency, though not an import-time one)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    is_pkg = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_pkg else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            out.add(target)
            for a in node.names:  # `from pkg import submodule`
                if f"{target}.{a.name}" in MODULES:
                    out.add(f"{target}.{a.name}")
        elif lazy and isinstance(node, ast.Constant) and isinstance(node.value, str) and LAZY_REF.match(node.value):
            out.add(node.value.partition(":")[0])  # a registry's lazy "module:attribute" entry
    return {m for m in out if m == "promptr1" or m.startswith("promptr1.")}


GRAPH = {m: _imports(m, p) for m, p in MODULES.items()}  # imports and registry strings: what layers check
IMPORTS = {m: _imports(m, p, lazy=False) for m, p in MODULES.items()}  # imports only: what cycles are made of


def test_every_module_has_a_layer():
    assert len(MODULES) > 40
    for m in MODULES:
        _level(m)


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _level(m) is not None))
def test_imports_point_down(module):
    mine = _level(module)
    for target in GRAPH[module]:
        theirs = _level(target)
        assert theirs is not None, f"{module} imports the test double {target}; library code never does"
        assert theirs <= mine, f"{module} (layer {mine}) imports {target} (layer {theirs}): layers point down"


@pytest.mark.parametrize("a, b", [("promptr1.rewards", "promptr1.llm_backends"),
                                  ("promptr1.evaluation", "promptr1.integrations")])
def test_packages_of_one_layer_do_not_reference_each_other(a, b):
    for module, targets in GRAPH.items():
        for mine, other in ((a, b), (b, a)):
            if module == mine or module.startswith(mine + "."):
                crossing = sorted(t for t in targets if t == other or t.startswith(other + "."))
                assert not crossing, f"{module} references {crossing}: same-layer packages stay independent"


def test_registry_strings_resolve_and_count_as_imports():
    """Every lazy registry entry names a module that exists, and the layer check above sees it (so a library module
    naming a test double by string fails ``test_imports_point_down`` like an import would)."""
    refs = {}
    for module, path in MODULES.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and LAZY_REF.match(node.value):
                refs[node.value] = module
    assert len(refs) >= 10
    import importlib

    for ref, module in refs.items():
        target, _, attr = ref.partition(":")
        assert hasattr(importlib.import_module(target), attr), f"{module} names {ref}, which does not exist"
        assert target in GRAPH[module]


def test_the_checker_sees_an_upward_registry_string(tmp_path):
    f = tmp_path / "mod.py"
    f.write_text('REG = {"sim": "promptr1.envs.synthetic.expert:SimExpert"}\n')
    assert "promptr1.envs.synthetic.expert" in _imports("promptr1.llm_backends.mod", f)


def test_training_wing_does_not_import_evaluation():
    for module, targets in GRAPH.items():
        if module.startswith("promptr1.agents"):
            assert not any(t.startswith("promptr1.evaluation") for t in targets), module


def test_no_import_cycles():
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(IMPORTS.get(m, ())):
            if t not in IMPORTS or t == m:
                continue
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(IMPORTS):
        if m not in state:
            visit(m)


def test_private_names_do_not_cross_packages():
    for module, path in MODULES.items():
        top = ".".join(module.split(".")[:2])
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("promptr1.") and not node.level:
                if ".".join(node.module.split(".")[:2]) == top:
                    continue
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                assert not private, f"{module} imports private {private} from {node.module}"


def test_the_checker_sees_a_violation(tmp_path):
    """The parser resolves relative and lazy imports (so the tests above can fail)."""
    f = tmp_path / "mod.py"
    f.write_text("from .base import X\n\ndef f():\n    from promptr1.agents import rollout\n")
    got = _imports("promptr1.llm_backends.mod", f)
    assert got >= {"promptr1.llm_backends.base", "promptr1.agents", "promptr1.agents.rollout"}
    assert _level("promptr1.agents.rollout") > _level("promptr1.llm_backends.mod")
