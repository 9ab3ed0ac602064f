"""Task types come from evidence (name, then content, then row exceptions), are reported, and the user wins."""

from __future__ import annotations

import json
import pathlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from promptr1.envs.task_types import infer_set_type, is_long_text, is_numeric, row_type
from promptr1.envs.tasks import load_jsonl, load_parquet, load_tasks

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "prompt-r1"
EXPECTED = {"hotpot": "qa", "2WikiMultihopQA": "qa", "MusiQue": "qa", "PopQA": "qa", "gsm8k": "math",
            "DAPO-Math": "math", "BookSum": "text", "WritingPrompts": "text"}
needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason="the paper's evaluation sets live in ../shared")


@needs_shared
@pytest.mark.parametrize("stem, kind", sorted(EXPECTED.items()))
def test_shared_sets_are_typed_right(stem, kind):
    tasks = load_parquet(SHARED / f"{stem}.parquet")
    assert {t.ability for t in tasks} == {kind}
    assert all(t.type_evidence for t in tasks)
    assert tasks.describe_types().startswith(f"{kind} 128 (")


@needs_shared
@pytest.mark.parametrize("stem, kind", sorted(EXPECTED.items()))
def test_renamed_copies_are_typed_by_content(tmp_path, stem, kind):
    """A set we have never seen: the same rows under a name that says nothing."""
    table = pq.read_table(SHARED / f"{stem}.parquet")
    renamed = table.set_column(table.column_names.index("data_source"), "data_source",
                               pa.array(["set-0042"] * table.num_rows))
    path = tmp_path / "unnamed_0042.parquet"
    pq.write_table(renamed, path)
    tasks = load_parquet(path)
    counts = {k: sum(t.ability == k for t in tasks) for k in ("qa", "math", "text")}
    assert counts[kind] >= 0.95 * len(tasks), (counts, tasks.describe_types())
    assert "content" in tasks.describe_types() or "row" in tasks.describe_types()


@needs_shared
def test_the_mixed_validation_file_is_typed_row_by_row():
    tasks = load_parquet(SHARED / "validation.parquet")
    kinds = {t.ability for t in tasks}
    assert kinds == {"qa", "math", "text"}
    by_id = {t.ability: t for t in tasks}
    assert len(by_id["text"].answers[0].split()) >= 40 and is_numeric(by_id["math"].answers[0])


def test_user_choice_wins_and_bad_types_are_refused(tmp_path):
    path = tmp_path / "numbers.jsonl"
    path.write_text("\n".join(json.dumps({"question": f"What is {i} + {i}?", "answers": [str(2 * i)]})
                              for i in range(5)) + "\n")
    assert {t.ability for t in load_jsonl(path)} == {"math"}
    forced = load_tasks(str(path), task_type="qa")
    assert {t.ability for t in forced} == {"qa"}
    assert forced[0].type_evidence == "set by the user (task_type=qa)"
    with pytest.raises(ValueError, match="task_type must be one of qa, math, text"):
        load_tasks(str(path), task_type="maths")


def test_row_ability_field_wins_over_content(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = [{"question": "Tell a story.", "answers": ["Once."], "ability": "text"},
            {"question": "Capital of France?", "answers": ["Paris"]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    tasks = load_jsonl(path)
    assert [t.ability for t in tasks] == ["text", "qa"]
    assert tasks[0].type_evidence == "row ability 'text'"


@pytest.mark.parametrize("name, golds, kind", [
    ("xsum-test", [("A short one-line summary.",)], "text"),
    ("mathqa", [("c",)], "math"),
    ("squad_v2", [("1976",), ("Denver Broncos",)], "qa"),
    ("trivia_qa", [("Paris",)], "qa"),
    ("whatever", [(str(i),) for i in range(10)], "math"),
    ("whatever", [("It was dark. It rained. We left.",)] * 5, "text"),
    ("whatever", [("Paris",), ("1976",)], "qa"),
])
def test_set_rules(name, golds, kind):
    assert infer_set_type(name, golds)[0] == kind


@pytest.mark.parametrize("question, golds, kind", [
    ("In what year was the host from 1984 to 1992 born?", ("1935",), "qa"),  # years are QA answers
    ("Beth had 150 students. 30 more join and 15 leave. How many are left?", ("165",), "math"),
    ("Find the radius $r$", ("13",), "math"),
    ("How many members does the band have?", ("4",), "qa"),
    ("Write a story about a dragon.", ("It flew. It burned. It slept. The end came.",), "text"),
])
def test_row_exceptions_in_a_qa_set(question, golds, kind):
    assert row_type("qa", question, golds)[0] == kind


def test_helpers():
    assert is_numeric("$1,200") and is_numeric("-2.5") and not is_numeric("12 apples")
    assert is_long_text(" ".join(["word"] * 40)) and not is_long_text("A short answer.")
