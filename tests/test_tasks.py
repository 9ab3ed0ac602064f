"""Task sources: the official parquet schema, JSONL, and argument errors."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from promptr1.envs.tasks import DEFAULT_INSTRUCTION, Task, load_jsonl, load_parquet, load_tasks

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "prompt-r1"


def _official_table(rows):
    return pa.Table.from_pylist(rows)


def test_parquet_in_official_schema_round_trips_the_prompt(tmp_path):
    content = "Question: What is 2+2?\nwith a second line\nFirst, provide a simple explanation of the question and more"
    path = tmp_path / "mini.parquet"
    pq.write_table(_official_table([
        {"data_source": "gsm8k-test", "prompt": [{"role": "user", "content": content}], "ability": "multihop_qa",
         "reward_model": {"ground_truth": ["4", "four"], "style": "rule"}},
    ]), path)
    (task,) = list(load_parquet(path))
    assert task.prompt == content                      # the agent sees exactly the official text
    assert task.question == "What is 2+2?\nwith a second line"
    assert task.answers == ("4", "four")
    assert task.ability == "math" and task.id == "mini-0"


def test_parquet_with_wrong_schema_is_a_clear_error(tmp_path):
    path = tmp_path / "bad.parquet"
    pq.write_table(pa.Table.from_pylist([{"question": "q", "answer": "a"}]), path)
    with pytest.raises(ValueError, match="missing column"):
        load_parquet(path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_parquet(tmp_path / "nope.parquet")


def test_jsonl_tasks_and_errors(tmp_path):
    path = tmp_path / "qa.jsonl"
    path.write_text(
        json.dumps({"question": "Capital of France?", "answers": ["Paris"]}) + "\n\n"
        + json.dumps({"question": "Zoë's city?", "answer": "東京", "id": "z"}) + "\n",
        encoding="utf-8",
    )
    tasks = load_tasks(str(path))
    assert [t.answers for t in tasks] == [("Paris",), ("東京",)]
    assert tasks[0].instruction == DEFAULT_INSTRUCTION and tasks[1].id == "z"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "q"}\n', encoding="utf-8")
    with pytest.raises(ValueError, match="line 1: expected keys 'question' and 'answers'"):
        load_jsonl(bad)
    bad.write_text("{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match="invalid JSON"):
        load_jsonl(bad)


def test_load_tasks_rejects_unknown_specs():
    with pytest.raises(ValueError, match="expected 'synthetic"):
        load_tasks("tasks.csv")
    with pytest.raises(TypeError):
        load_tasks(42)
    with pytest.raises(ValueError, match="non-empty"):
        Task("  ", ("a",))


@pytest.mark.skipif(not SHARED.is_dir(), reason="the paper's evaluation sets live in ../shared (present in CI)")
@pytest.mark.parametrize("name,ability", [("hotpot.parquet", "qa"), ("gsm8k.parquet", "math"),
                                          ("BookSum.parquet", "text"), ("DAPO-Math.parquet", "math")])
def test_shipped_evaluation_sets_load(name, ability):
    tasks = load_parquet(SHARED / name)
    assert len(tasks) == 128
    raw = pq.read_table(SHARED / name).to_pylist()
    for task, row in zip(tasks, raw):
        assert task.prompt == row["prompt"][-1]["content"]
        assert list(task.answers) == list(row["reward_model"]["ground_truth"])
        assert task.ability == ability
