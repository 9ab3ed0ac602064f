"""The ``hf:`` task source: datasets read with the ``datasets`` library (local folders here; no hub access)."""

from __future__ import annotations

import pathlib
import shutil

import pytest

datasets = pytest.importorskip("datasets")

from promptr1.envs.tasks import TASK_SOURCES, load_tasks  # noqa: E402

INSTRUCTION = "First, provide a simple explanation of the question. Then answer inside <answer></answer>."


def official_row(i: int, source: str = "hotpotqa") -> dict:
    """A row in the paper's parquet schema."""
    return {"data_source": source,
            "prompt": [{"role": "user", "content": f"Question: Who founded city {i}?\n{INSTRUCTION}"}],
            "ability": "fact-reasoning",
            "reward_model": {"ground_truth": [f"Founder {i}", f"F{i}"], "style": "rule"},
            "extra_info": {"index": i, "split": "train"}}


def test_registered_as_a_task_source():
    assert "hf" in TASK_SOURCES


def test_folder_saved_with_save_to_disk(tmp_path):
    datasets.Dataset.from_list([official_row(i) for i in range(5)]).save_to_disk(str(tmp_path / "hotpot_ds"))
    tasks = load_tasks(f"hf:{tmp_path / 'hotpot_ds'}")
    assert len(tasks) == 5
    t = tasks[2]
    assert (t.question, t.answers, t.instruction) == ("Who founded city 2?", ("Founder 2", "F2"), INSTRUCTION)
    assert t.prompt == official_row(2)["prompt"][0]["content"]  # recomposes the official first message exactly
    assert (t.data_source, t.id, t.ability) == ("hotpotqa", "hotpot_ds-2", "qa")


def test_dataset_dict_splits_follow_the_caller_or_the_spec(tmp_path):
    folder = tmp_path / "dd"
    datasets.DatasetDict({
        "train": datasets.Dataset.from_list([official_row(i) for i in range(4)]),
        "test": datasets.Dataset.from_list([official_row(i) for i in range(10, 12)]),
    }).save_to_disk(str(folder))
    assert len(load_tasks(f"hf:{folder}")) == 4  # training reads train
    assert len(load_tasks(f"hf:{folder}", split="test")) == 2  # evaluation reads test
    assert [t.question for t in load_tasks(f"hf:{folder}:test")] == ["Who founded city 10?", "Who founded city 11?"]
    with pytest.raises(ValueError, match=r"no split 'dev'; it has \['test', 'train'\]"):
        load_tasks(f"hf:{folder}:dev")


def test_folder_of_parquet_files_in_the_papers_schema(tmp_path):
    folder = tmp_path / "pq"
    folder.mkdir()
    datasets.Dataset.from_list([official_row(i) for i in range(3)]).to_parquet(str(folder / "train.parquet"))
    datasets.Dataset.from_list([official_row(i, "gsm8k") for i in range(7, 9)]).to_parquet(str(folder / "test.parquet"))
    assert [t.question for t in load_tasks(f"hf:{folder}")] == [f"Who founded city {i}?" for i in range(3)]
    test = load_tasks(f"hf:{folder}", split="test")
    assert len(test) == 2 and test[0].data_source == "gsm8k"


def test_the_papers_own_files_as_a_folder(tmp_path):
    shared = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "prompt-r1"
    if not (shared / "hotpot.parquet").is_file():
        pytest.skip("the paper's evaluation sets are not in ../shared/data/prompt-r1")
    folder = tmp_path / "hotpot"
    folder.mkdir()
    shutil.copy(shared / "hotpot.parquet", folder / "hotpot.parquet")  # no split in the name: one split
    via_hf = load_tasks(f"hf:{folder}", split="test")
    direct = load_tasks(str(shared / "hotpot.parquet"))
    assert len(via_hf) == len(direct) == 128
    assert [(t.question, t.answers, t.instruction, t.ability) for t in via_hf] == \
        [(t.question, t.answers, t.instruction, t.ability) for t in direct]


def test_question_answers_columns(tmp_path):
    rows = [{"question": "2+2?", "answers": ["4"], "ability": "math"}, {"question": "Capital of France?",
                                                                         "answers": ["Paris"], "ability": "qa"}]
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "mixed"))
    tasks = load_tasks(f"hf:{tmp_path / 'mixed'}")
    assert [(t.question, t.answers) for t in tasks] == [("2+2?", ("4",)), ("Capital of France?", ("Paris",))]


def test_errors_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tasks(f"hf:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no save_to_disk dataset and no .parquet"):
        load_tasks(f"hf:{tmp_path / 'empty'}")
    datasets.Dataset.from_list([{"text": "no question here"}]).save_to_disk(str(tmp_path / "bad"))
    with pytest.raises(ValueError, match="expected the Prompt-R1 schema"):
        load_tasks(f"hf:{tmp_path / 'bad'}")
    # a hub name that is not cached, with offline mode on: a clear error at once, no network
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="not in the local datasets cache and offline mode is on"):
        load_tasks("hf:someone/not-cached-dataset:test")


def test_train_on_a_dataset_folder(tmp_path, capsys):
    from promptr1.commands.cli import main
    from promptr1.testing.tiny_model import tiny_model_path

    datasets.Dataset.from_list([official_row(i) for i in range(4)]).save_to_disk(str(tmp_path / "ds"))
    rc = main(["train", "--config", "defaults", "--model", str(tiny_model_path()), "--tasks", f"hf:{tmp_path / 'ds'}", "--env-llm", "echo",
               "--steps", "1", "--batch-questions", "2", "--group-size", "2", "--max-new-tokens", "6",
               "--max-turns", "2", "--progress", "false", "--kl-coef", "0", "--output-dir", str(tmp_path / "run")])
    assert rc == 0, capsys.readouterr().err
    assert (tmp_path / "run" / "checkpoint-000001").is_dir()
