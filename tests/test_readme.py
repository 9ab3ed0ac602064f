"""The README's Python examples run and do what their comments say."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_readme_python_example_runs_and_scores_full_reward():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.DOTALL)
    assert blocks, "README has no Python example"
    out = io.StringIO()
    namespace: dict = {}
    with contextlib.redirect_stdout(out):
        exec(compile(blocks[0], "README.md", "exec"), namespace)
    printed = out.getvalue()
    assert "<interaction_response>Miktha is located in Gosdorstan.</interaction_response>" in printed
    assert namespace["reward"] == 1.0 and namespace["terminated"] is True


def test_readme_states_which_options_keep_the_quickstart():
    """The quickstart section says how to shorten the quickstart, naming exactly the options that keep it."""
    from promptr1.commands.train import QUICKSTART_OPTIONS

    text = (ROOT / "README.md").read_text(encoding="utf-8")
    quickstart = " ".join(text[: text.index("\n## ")].split())  # the part above the first section
    assert "`promptr1 train --steps 2 --overwrite` is the quickstart, shorter" in quickstart
    assert "`promptr1 train --config quickstart --model NAME`" in quickstart
    rule = quickstart[quickstart.index("a command line holding only"):quickstart.index("keeps the quickstart's")]
    named = set(re.findall(r"`--([a-z0-9-]+)`", rule))
    expected = {name.replace("_", "-") for name in QUICKSTART_OPTIONS}
    assert named == expected, (f"README's quickstart rule names {sorted(named)}; promptr1.commands.train.QUICKSTART_OPTIONS "
                               f"is {sorted(expected)}: update the README to match")
