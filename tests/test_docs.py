"""The documentation says what the code does: its Python examples run, and its numbers carry their command.

* Every ```python block of README.md and docs/*.md runs, each in a fresh interpreter (so nothing registered by
  one block, and no test double imported by the test suite, helps another), from an empty working folder. A
  block that cannot run here (it needs a GPU, a key, a dataset file, or trains for minutes) says so on the
  line before it, with the reason: ``<!-- not-run: needs OPENAI_API_KEY -->``; one that runs but takes more
  than a few seconds (it loads SmolLM2) runs with the slow tests: ``<!-- slow: loads SmolLM2 -->``.
* Every table with a measurement in it (a confidence interval, a time, a rate, a ratio, a percentage, a count
  "N of M") and every paragraph with one has, within ``WINDOW`` lines and in the same section, the command
  that reproduces it: a ```bash block or an inline `python ...` / `promptr1 ...` / `pytest ...` span. A
  table or paragraph whose numbers are not measured by us (a setting, an example) says so on the line
  before it: ``<!-- not-measured: reason -->``.
* Links reach their file and heading, and the tests, scripts and ``promptr1.*`` names the docs give exist.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
WINDOW = 6  # lines between a measurement and its command
MARKER = re.compile(r"<!--\s*(not-run|not-measured|slow):(.*?)-->")


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the block's first code line
    lang: str
    code: str
    not_run: str | None  # the reason, "" when the marker has none, None without a marker
    slow: str | None = None  # ``<!-- slow: reason -->``: runs with the slow tests (``pytest -m slow``)


def _marker(lines: list[str], index: int, kind: str) -> str | None:
    """The reason of a ``<!-- KIND: reason -->`` marker on the nearest non-blank line before ``lines[index]``
    (``None`` without one)."""
    j = index - 1
    while j >= 0 and not lines[j].strip():
        j -= 1
    if j < 0:
        return None
    m = MARKER.search(lines[j])
    return m.group(2).strip() if m and m.group(1) == kind else None


def code_blocks(text: str, path: Path = Path("doc.md")) -> list[Block]:
    """The fenced code blocks of a Markdown text, with the ``not-run`` / ``slow`` reason on the line before
    each."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = re.match(r"\s*```(\w*)\s*$", lines[i])
        if m:
            j = i + 1
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            code = "\n".join(lines[i + 1:j])
            blocks.append(Block(path, i + 2, m.group(1), code, _marker(lines, i, "not-run"),
                                _marker(lines, i, "slow")))
            i = j
        i += 1
    return blocks


def _python_blocks() -> list:
    blocks = [b for path in DOCS for b in code_blocks(path.read_text(encoding="utf-8"), path)
              if b.lang == "python"]
    return [pytest.param(b, id=_block_id(b), marks=[pytest.mark.slow] if b.slow is not None else [])
            for b in blocks]


def _block_id(block: Block) -> str:
    return f"{block.path.relative_to(ROOT)}:{block.line}"


@pytest.mark.parametrize("block", _python_blocks())
def test_python_block_runs(block: Block, tmp_path: Path) -> None:
    where = _block_id(block)
    assert block.slow is None or block.slow, f"{where}: a slow marker needs its reason: <!-- slow: why -->"
    if block.not_run is not None:
        assert block.not_run, f"{where}: a not-run marker needs its reason: <!-- not-run: why not -->"
        # still valid Python: a marked block must not rot into pseudo-code
        compile(block.code, where, "exec")
        return
    env = dict(os.environ, MPLBACKEND="Agg", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1",
               HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("OPENAI_API_KEY", None)
    env.pop("OPENAI_BASE_URL", None)
    proc = subprocess.run([sys.executable, "-c", block.code], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300, check=False)
    assert proc.returncode == 0, (
        f"the Python block at {where} fails: fix the block, or mark it <!-- not-run: reason --> on the line "
        f"before it.\n{proc.stderr[-3000:]}"
    )


def test_the_runner_finds_markers_and_refuses_a_marker_without_reason() -> None:
    text = ("Intro.\n\n```python\nx = 1\n```\n\n<!-- not-run: needs a GPU -->\n```python\nimport cuda\n```\n"
            "<!-- not-run: -->\n\n```python\ny = 2\n```\n```bash\nls\n```\n"
            "<!-- slow: loads SmolLM2 -->\n```python\nz = 3\n```\n")
    blocks = code_blocks(text)
    assert [(b.lang, b.not_run, b.slow) for b in blocks] == [
        ("python", None, None), ("python", "needs a GPU", None), ("python", "", None), ("bash", None, None),
        ("python", None, "loads SmolLM2")]
    assert blocks[0].line == 4 and blocks[0].code == "x = 1"


# ------------------------------------------------------------------ numbers next to their commands
UNIT = r"(?:µs|us|ms|s|sec|min|h|GB|MB|MiB|KB|ep/s|tokens/s|tok/s|requests/s|req/s)"
MEASUREMENT = re.compile(
    r"\[[-+]?\d+\.\d+, [-+]?\d+\.\d+\]"            # a confidence interval [low, high]
    rf"|(?<![\w.])\d[\d.,]*\s?{UNIT}(?![\w/])"      # a time, a size, a rate
    r"|(?<![\w.])\d+\.\d+x\b"                       # a ratio, 0.58x
    r"|(?<![\w.])\d[\d.]*%"                          # a percentage
    r"|(?<![\w.])\d[\d,]* of \d[\d,]*\b"             # a count, 94 of 100
)
COMMAND = re.compile(r"^\s*```(?:bash|sh|console)\s*$"
                     r"|`(?:[A-Z_]+=\S+ )*(?:python|promptr1|pytest|accelerate)\b")  # an inline span may wrap


def _strip_code_spans(line: str) -> str:
    return re.sub(r"`[^`]*`", "", line)


def unreproduced_numbers(text: str, window: int = WINDOW) -> list[tuple[int, str]]:
    """``(line, text)`` of every measurement with no command within ``window`` lines.

    A table, a paragraph or a list counts as one unit: a command within ``window`` lines of its first or last
    line, in the same section (no heading between them), covers it. Lines in
    fenced blocks are neither measurements nor (except a bash fence) commands; a table or line marked
    ``<!-- not-measured: reason -->`` on the line before is skipped.
    """
    lines = text.splitlines()
    in_fence, fenced = False, [False] * len(lines)
    for i, line in enumerate(lines):
        if re.match(r"\s*```", line):
            fenced[i] = True
            in_fence = not in_fence
        else:
            fenced[i] = in_fence
    section, n = [], 0
    for i, line in enumerate(lines):
        n += bool(not fenced[i] and line.startswith("#"))
        section.append(n)
    commands = [i for i, line in enumerate(lines)
                if COMMAND.search(line) and (not fenced[i] or "```" in line)]

    def has_command(first: int, last: int) -> bool:
        return any(first - window <= c <= last + window and section[c] == section[first] for c in commands)

    problems, i = [], 0
    while i < len(lines):
        if fenced[i] or not lines[i].strip() or re.fullmatch(r"\s*<!--.*-->\s*", lines[i]):
            i += 1
            continue
        if lines[i].lstrip().startswith("|"):
            j = i
            while j + 1 < len(lines) and lines[j + 1].lstrip().startswith("|"):
                j += 1
            hits = [k for k in range(i, j + 1) if MEASUREMENT.search(_strip_code_spans(lines[k]))]
            if hits and _marker(lines, i, "not-measured") is None and not has_command(i, j):
                problems.append((hits[0] + 1, lines[hits[0]].strip()))
            i = j + 1
            continue
        j = i  # a paragraph (or a list without blank lines) counts as one unit, like a table
        while (j + 1 < len(lines) and lines[j + 1].strip() and not fenced[j + 1]
               and not lines[j + 1].lstrip().startswith(("|", "#", "<!--"))):
            j += 1
        hits = [k for k in range(i, j + 1) if MEASUREMENT.search(_strip_code_spans(lines[k]))]
        if hits and _marker(lines, i, "not-measured") is None and not has_command(i, j):
            problems.append((hits[0] + 1, lines[hits[0]].strip()))
        i = j + 1
    return problems


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_measurement_sits_next_to_its_command(path: Path) -> None:
    problems = unreproduced_numbers(path.read_text(encoding="utf-8"))
    listing = "\n".join(f"  {path.relative_to(ROOT)}:{n}: {text[:120]}" for n, text in problems)
    assert not problems, (
        f"measurements without the command that reproduces them (within {WINDOW} lines: a ```bash block "
        f"or an inline `python ...` / `promptr1 ...` span), or mark what is not a measurement with "
        f"<!-- not-measured: reason -->:\n{listing}"
    )


def test_the_number_checker_fails_on_a_bare_number_and_passes_with_its_command() -> None:
    filler = "\n" * (WINDOW + 2)
    bad = (f"# Results\n{filler}| policy | reward |\n|---|---|\n| ours | +0.23 [+0.17, +0.29] |\n{filler}"
           f"Each step takes 58 s on a CPU.\n{filler}")
    def line_of(text: str, needle: str) -> int:
        return text.splitlines().index(needle) + 1

    table_row, prose = "| ours | +0.23 [+0.17, +0.29] |", "Each step takes 58 s on a CPU."
    assert [n for n, _ in unreproduced_numbers(bad)] == [line_of(bad, table_row), line_of(bad, prose)]
    good = bad.replace("| policy", "From `python benchmarks/bench_learning.py`:\n| policy", 1)
    # the table is covered, not the prose
    assert [n for n, _ in unreproduced_numbers(good)] == [line_of(good, prose)]
    fenced = good.replace(prose, prose + "\n\n```bash\npython benchmarks/bench_learning.py --steps 1\n```")
    assert unreproduced_numbers(fenced) == []
    other_section = good.replace(prose, prose + "\n\n## Next\n\n```bash\npython other.py\n```")
    assert [n for n, _ in unreproduced_numbers(other_section)] == [line_of(good, prose)]  # a heading between
    marked = bad.replace("| policy", "<!-- not-measured: the reference's values -->\n| policy", 1)
    assert [n for n, _ in unreproduced_numbers(marked)] == [line_of(marked, prose)]
    # numbers inside code (a command's own flags, a snippet) are not measurements
    assert unreproduced_numbers(f"{filler}Run `sleep 5 s` or:\n```\nwait 5 s\n```\n{filler}") == []
    # settings and plain integers are not measurements
    assert unreproduced_numbers("replies cut at 2,048 characters, 5 turns, lr 1e-6, weight 0.25") == []


# ------------------------------------------------------------------ links, files and tests the docs name
def _slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _headings(text: str) -> set[str]:
    return {_slug(line.lstrip("#")) for line, fenced in zip(text.splitlines(), _fenced(text)) if
            line.startswith("#") and not fenced}


def _fenced(text: str) -> list[bool]:
    out, inside = [], False
    for line in text.splitlines():
        if re.match(r"\s*```", line):
            inside = not inside
            out.append(True)
        else:
            out.append(inside)
    return out


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_files_and_tests_named_by_the_docs_exist(path: Path) -> None:
    """A relative link reaches its file and heading; a repository path or a test the docs name exists (a
    design document outside the repository is not a source to cite)."""
    text, problems = path.read_text(encoding="utf-8"), []
    for link in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+://", link):
            continue
        file, _, anchor = link.partition("#")
        target = (path.parent / file) if file else path
        if not target.exists():
            problems.append(f"link {link}: no file {file}")
        elif (anchor and target.suffix == ".md"
              and anchor not in _headings(target.read_text(encoding="utf-8"))):
            problems.append(f"link {link}: no heading #{anchor} in {file or path.name}")
    for file, name in re.findall(r"`?((?:tests|benchmarks|examples)/[\w/.-]+\.py)(?:::(\w+))?", text):
        if not (ROOT / file).is_file():
            problems.append(f"{file} does not exist")
        elif name and not re.search(rf"def {name}\b", (ROOT / file).read_text(encoding="utf-8")):
            problems.append(f"{file} has no test {name}")
    if re.search(r"design\.md|\(design, section", text):
        problems.append("cites a design document that is not in the repository: cite docs/ or the code")
    assert not problems, f"{path.relative_to(ROOT)}:\n  " + "\n  ".join(problems)


def test_the_link_checker_sees_a_missing_heading() -> None:
    assert "the-turn-protocol" in _headings("# The turn protocol\n```\n# not a heading\n```\n")
    assert "not-a-heading" not in _headings("# The turn protocol\n```\n# not a heading\n```\n")


def _resolve(ref: str) -> str | None:
    """``None`` when ``promptr1.a.b.name`` imports and has each attribute, else what is missing. A module
    whose optional dependency is not installed (verl, ...) counts as present."""
    import importlib

    parts = ref.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ModuleNotFoundError as e:
            if e.name and not e.name.startswith("promptr1"):
                return None  # an optional dependency of that module
            continue
        except ImportError:
            return None  # e.g. promptr1.integrations.verl without verl: its own ImportError names the install
        for name in parts[i:]:
            if not hasattr(obj, name):
                return f"{'.'.join(parts[:i])} has no {name!r}"
            obj = getattr(obj, name)
        return None
    return f"no module {ref}"


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_python_names_in_the_docs_exist(path: Path) -> None:
    refs = sorted(set(re.findall(r"`(promptr1(?:\.\w+)+)", path.read_text(encoding="utf-8"))))
    missing = [f"{ref}: {why}" for ref in refs if (why := _resolve(ref))]
    listing = "\n  ".join(missing)
    assert not missing, f"{path.relative_to(ROOT)} names what the code does not have:\n  {listing}"


def test_a_missing_name_is_reported() -> None:
    assert _resolve("promptr1.rewards.compute_reward") is None
    assert _resolve("promptr1.rewards.compute_rewardz") == "promptr1.rewards has no 'compute_rewardz'"
