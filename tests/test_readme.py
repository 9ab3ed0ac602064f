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


