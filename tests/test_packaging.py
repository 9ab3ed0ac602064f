"""Packaging: the wheel carries every subpackage under `promptr1`, and nothing leaks as a bare top-level name."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("envs", "agents", "rewards", "llm_backends", "evaluation", "core", "commands", "integrations", "testing")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    wheels = list(out.glob("prompt_r1-*.whl"))
    assert len(wheels) == 1, list(out.iterdir())
    return wheels[0]


def test_wheel_contains_every_subpackage(wheel: Path):
    names = zipfile.ZipFile(wheel).namelist()
    for sub in SUBPACKAGES:
        assert f"promptr1/{sub}/__init__.py" in names, f"promptr1.{sub} missing from the wheel"
        # every module of the source folder is shipped
        for src in (ROOT / sub).glob("*.py"):
            assert f"promptr1/{sub}/{src.name}" in names, f"{sub}/{src.name} missing from the wheel"
    assert "promptr1/__init__.py" in names and "promptr1/commands/cli.py" in names
    assert "promptr1/configs/quickstart.yaml" in names
    assert "promptr1/commands/static/index.html" in names, "promptr1 serve's page is missing from the wheel"
    tops = {n.split("/")[0] for n in names if not n.startswith("prompt_r1-")}
    assert tops == {"promptr1"}, f"unexpected top-level entries in the wheel: {sorted(tops)}"
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "promptr1 = promptr1.commands.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


def test_no_bare_subpackage_importable_after_install(tmp_path: Path):
    code = (
        "import importlib.util, sys\n"
        f"bare = [n for n in {SUBPACKAGES!r} if importlib.util.find_spec(n) is not None"
        " and 'promptr1' not in (importlib.util.find_spec(n).origin or '')]\n"
        "import promptr1.envs, promptr1.agents, promptr1.rewards, promptr1.llm_backends, promptr1.commands\n"
        "print(bare)\n"
    )
    # run from an unrelated folder so the checkout root is not on sys.path
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert proc.returncode == 0, proc.stderr
    leaked = eval(proc.stdout.strip())  # a list literal printed by our own snippet
    # `agents` may legitimately be another distribution (the OpenAI Agents SDK); it must not be ours
    assert leaked == [], f"bare modules resolve to this project: {leaked}"


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```(?:bash|sh)?\n(.*?)```", text, re.DOTALL)
    assert block, "README must open with a code block of set-up commands"
    return [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_two_commands_and_ci_runs_the_test_one():
    cmds = _readme_commands()
    assert len(cmds) == 2, cmds
    install_and_run, install_and_test = cmds
    assert "pytest" in install_and_test and "pytest" not in install_and_run
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert install_and_test in ci.splitlines(), "'.ci/run' must run the README's test command verbatim"


#: Declared dependencies imported under another name, or used through another package (what to look for).
USED_AS = {
    "pyyaml": [r"(from|import)\s+yaml\b"],
    "tensorboard": [r"from\s+torch\.utils\.tensorboard\s+import"],  # SummaryWriter needs tensorboard
    "gguf": [r"gguf_file="],  # transformers reads the SmolLM2 GGUF file with it (llm_backends/smollm2.py)
}


def test_every_declared_dependency_is_used():
    """A dependency no library module or example uses is dead weight every user installs (as aiolimiter
    was)."""
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    folders = {ROOT / "promptr1", ROOT / "examples"}
    folders |= {ROOT / d for d in project["tool"]["setuptools"].get("package-dir", {}).values()}
    text = "\n".join(p.read_text(encoding="utf-8") for f in folders for p in f.rglob("*.py"))
    unused = []
    for requirement in project["project"]["dependencies"]:
        name = re.split(r"[<>=!~;\[ ]", requirement, maxsplit=1)[0].strip().lower()
        patterns = USED_AS.get(name, [rf"^\s*(from|import)\s+{name.replace('-', '_')}\b"])
        if not any(re.search(p, text, re.M) for p in patterns):
            unused.append(name)
    assert unused == [], f"declared in pyproject.toml but used nowhere: {unused}; remove them"
