"""A long real run must not go wrong silently (issue 18): checkpoints load as data, earlier runs are never
overwritten, files never tear, and a run in which the env LLM failed says so with a non-zero exit."""

from __future__ import annotations

import json
import os
import pathlib
import random

import numpy as np
import pytest
import torch

from promptr1.agents.checkpoint import (
    CheckpointError,
    capture_rng_state,
    claim_output_dir,
    find_latest_checkpoint,
    load_checkpoint_file,
    publish_checkpoint,
    restore_rng_state,
    temp_dir_for,
    write_checkpoint,
)
from promptr1.commands.cli import main
from promptr1.llm_backends import BACKENDS, EnvLLMError, register_backend
from promptr1.testing.scripted import ScriptedBackend

FAST = ["--batch-questions", "2", "--group-size", "2", "--max-new-tokens", "32", "--max-turns", "2",
        "--progress", "false", "--max-seq-len", "768", "--kl-coef", "0", "--num-transcripts", "0"]


class _RunsCode:
    """A pickle payload: unpickling it calls ``pathlib.Path(SENTINEL).touch()`` (a stand-in for a shell command)."""

    def __init__(self, sentinel: pathlib.Path):
        self.sentinel = sentinel

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.sentinel),))


@pytest.fixture(scope="module")
def tiny_path():
    from promptr1.testing.tiny_model import tiny_model_path

    return str(tiny_model_path())


@pytest.fixture
def tiny(tiny_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(tiny_path), AutoTokenizer.from_pretrained(tiny_path)


# ----------------------------------------------------------------------------- 1. checkpoints are data


def test_rng_state_round_trips_through_a_weights_only_load(tmp_path):
    torch.save(capture_rng_state(), tmp_path / "rng.pt")
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    restore_rng_state(load_checkpoint_file(tmp_path / "rng.pt"))  # weights_only=True
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_a_pickle_that_runs_code_is_refused_not_loaded(tmp_path):
    sentinel = tmp_path / "ran"
    torch.save({"state": _RunsCode(sentinel)}, tmp_path / "optimizer.pt")
    with pytest.raises(CheckpointError, match="would run code"):
        load_checkpoint_file(tmp_path / "optimizer.pt")
    assert not sentinel.exists()


@pytest.mark.parametrize("where", ["optimizer.pt", "rng_state_rank0.pt", "accelerate_state/optimizer.bin",
                                   "accelerate_state/random_states_0.pkl"])
def test_resume_never_runs_code_from_a_checkpoint(tmp_path, tiny_path, always_prompt, capsys, caplog, where):
    out = tmp_path / "run"
    argv = ["train", "--config", "defaults", "--model", tiny_path, "--env-llm", "sim", "--steps", "1", "--output-dir", str(out), *FAST]
    assert main(argv) == 0, capsys.readouterr().err
    ckpt = find_latest_checkpoint(out)
    if not where.startswith("accelerate_state"):  # the single-process layout: no accelerate_state/ folder
        import shutil

        shutil.rmtree(ckpt / "accelerate_state")
    sentinel = tmp_path / "ran"
    torch.save({"state": _RunsCode(sentinel)}, ckpt / where)
    rc = main([*argv, "--steps", "2", "--resume", "auto"])
    err = capsys.readouterr().err
    assert not sentinel.exists(), "resuming unpickled the checkpoint"
    if where.endswith("random_states_0.pkl"):
        assert rc == 0  # accelerate treats an unreadable RNG file as absent (it logs and goes on), code still not run
        warned = [r.getMessage() for r in caplog.records if "RNG state was not restored" in r.getMessage()]
        assert len(warned) == 1 and "random_states_0.pkl" in warned[0]  # issue 25, item 9: said, not silent
    else:
        assert rc == 2 and "refusing to load" in err and "would run code" in err


# ----------------------------------------------------------------------------- 6/7. earlier runs, torn writes


def test_a_fresh_run_refuses_a_folder_with_an_earlier_run(tmp_path, tiny_path, always_prompt, capsys):
    out = tmp_path / "run"
    argv = ["train", "--config", "defaults", "--model", tiny_path, "--env-llm", "sim", "--steps", "1", "--output-dir", str(out), *FAST]
    assert main(argv) == 0
    first = find_latest_checkpoint(out)
    weights = (first / "model.safetensors").read_bytes()
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "holds an earlier run" in err and "--resume auto" in err and "--overwrite" in err
    assert (first / "model.safetensors").read_bytes() == weights  # untouched

    (out / "notes.txt").write_text("mine")  # not the run's: --overwrite leaves it alone
    assert main([*argv, "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert "removed the earlier run's" in printed
    assert (out / "notes.txt").read_text() == "mine"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete"
    # the training summary carries the process's peak memory, printed with the "done" line too
    assert summary["peak_rss_gb"] > 0 and f"peak memory {summary['peak_rss_gb']:.1f} GB RAM" in printed


def test_claim_output_dir_on_empty_or_log_only_folders(tmp_path):
    assert claim_output_dir(tmp_path / "new") == []
    (tmp_path / "logs" / "tensorboard").mkdir(parents=True)
    assert claim_output_dir(tmp_path / "logs") == []  # a run that stopped before its first checkpoint
    (tmp_path / "logs" / "checkpoint-000003").mkdir()
    assert claim_output_dir(tmp_path / "logs", resume="auto") == []
    with pytest.raises(FileExistsError, match="checkpoint-000003"):
        claim_output_dir(tmp_path / "logs")


def test_saving_a_step_again_never_leaves_latest_pointing_at_nothing(tmp_path, tiny, monkeypatch):
    model, tok = tiny
    first = write_checkpoint(tmp_path, 5, model=model, tokenizer=tok, optimizer=None, scheduler=None,
                             trainer_state={"v": 1})
    # Every rename and deletion of the re-save is a moment a crash can hit: at each, `latest` must name a
    # complete checkpoint.
    seen = []
    real_rename, real_rmtree = os.rename, __import__("shutil").rmtree

    def check(*a, **k):
        seen.append(find_latest_checkpoint(tmp_path))
        assert seen[-1] is not None and (seen[-1] / "trainer_state.json").is_file()

    def rename(src, dst):
        check()
        real_rename(src, dst)
        check()

    def rmtree(path, *a, **k):
        check()
        real_rmtree(path, *a, **k)
        check()

    import promptr1.agents.checkpoint as ck

    monkeypatch.setattr(ck.os, "rename", rename)
    monkeypatch.setattr(ck.shutil, "rmtree", rmtree)
    second = write_checkpoint(tmp_path, 5, model=model, tokenizer=tok, optimizer=None, scheduler=None,
                              trainer_state={"v": 2})
    assert seen
    assert second != first and not first.exists()
    assert find_latest_checkpoint(tmp_path) == second
    assert json.loads((second / "trainer_state.json").read_text())["v"] == 2
    # a later step sorts after the re-saved one
    later = write_checkpoint(tmp_path, 6, model=model, tokenizer=tok, optimizer=None, scheduler=None,
                             trainer_state={}, keep=1)
    assert find_latest_checkpoint(tmp_path) == later and not second.exists()


def test_publish_refuses_an_incomplete_temporary_folder(tmp_path):
    temp_dir_for(tmp_path, 1).mkdir()
    with pytest.raises(FileNotFoundError, match="incomplete"):
        publish_checkpoint(tmp_path, 1)


def test_eval_run_config_is_written_atomically_and_a_corrupt_one_is_explained(tmp_path, monkeypatch):
    from promptr1.evaluation import EvalConfig, run_evaluation

    cfg = EvalConfig(tasks=["synthetic"], methods=["direct"], env_llm="sim", limit=2, output_dir=str(tmp_path),
                     chart=False, progress=False)
    import promptr1.core.fileio as fileio

    calls = []
    real = fileio.os.replace
    monkeypatch.setattr(fileio.os, "replace", lambda a, b: (calls.append(pathlib.Path(b).name), real(a, b)))
    run_evaluation(cfg)
    assert {"run_config.json", "report.md", "summary.json"} <= set(calls)
    (tmp_path / "run_config.json").write_text("")  # as a crash of the old in-place write left it
    with pytest.raises(ValueError, match="delete that one file to resume"):
        run_evaluation(cfg)
    (tmp_path / "run_config.json").unlink()
    assert run_evaluation(cfg).planned == 2  # resumes, transcripts kept


# ----------------------------------------------------------------------------- 10. failures are not successes


@pytest.fixture
def unauthorized():
    def factory(**kwargs):
        return ScriptedBackend([EnvLLMError("401 Unauthorized: invalid API key", kind="bad_request")])

    register_backend("always-401", factory, overwrite=True)
    yield "always-401"
    BACKENDS.unregister("always-401")


def test_eval_where_every_call_failed_exits_1_and_says_why(tmp_path, unauthorized, capsys):
    out = tmp_path / "eval"
    rc = main(["eval", "synthetic", "--methods", "direct", "--env-llm", unauthorized, "--limit", "3",
               "--output-dir", str(out), "--chart", "false", "--progress", "false"])
    captured = capsys.readouterr()
    assert rc == 1
    assert "FAILED" in captured.err and "401 Unauthorized" in captured.err
    report = (out / "report.md").read_text()
    assert "FAILED" in report and "401 Unauthorized" in report and "complete:" not in report
    assert json.loads((out / "summary.json").read_text())["failed"]


def test_eval_with_some_failures_still_exits_0(tmp_path, capsys):
    flaky = ScriptedBackend(["Gosdorstan", EnvLLMError("timed out", kind="timeout")])
    from promptr1.evaluation import EvalConfig, run_evaluation

    result = run_evaluation(EvalConfig(tasks=["synthetic"], methods=["direct"], env_llm="flaky", limit=4,
                                       output_dir=str(tmp_path), chart=False, progress=False),
                            backends={"flaky": flaky})
    assert not result.failed and sum(bool(r["env_error"]) for r in result.records) == 2


def test_training_where_the_env_llm_always_fails_exits_non_zero(tmp_path, tiny_path, always_prompt, unauthorized,
                                                                  capsys):
    out = tmp_path / "run"
    rc = main(["train", "--config", "defaults", "--model", tiny_path, "--env-llm", unauthorized, "--steps", "5", "--output-dir", str(out),
               *FAST])
    err = capsys.readouterr().err
    assert rc == 1
    assert "FAILED" in err and "401 Unauthorized" in err and "steps 1-3" in err
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["step"] == 3 and "401 Unauthorized" in summary["reason"]
    assert find_latest_checkpoint(out) is not None  # the last step was saved


def test_a_single_step_that_failed_completely_is_a_failed_run(tmp_path, tiny_path, always_prompt, unauthorized,
                                                               capsys):
    rc = main(["train", "--config", "defaults", "--model", tiny_path, "--env-llm", unauthorized, "--steps", "1", "--output-dir",
               str(tmp_path / "run"), *FAST])
    assert rc == 1 and "every episode of the run that reached the env LLM failed" in capsys.readouterr().err


def test_error_rate_threshold_is_an_option(tmp_path, tiny_path, always_prompt, unauthorized, capsys):
    rc = main(["train", "--config", "defaults", "--model", tiny_path, "--env-llm", unauthorized, "--steps", "2", "--output-dir",
               str(tmp_path / "run"), "--max-env-error-rate", "2", *FAST])
    assert rc == 2 and "--max-env-error-rate" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 11. validate before the work


def test_eval_with_a_missing_agent_fails_in_one_line_before_any_call(tmp_path, capsys):
    calls = []

    def factory(**kwargs):
        calls.append(1)
        return ScriptedBackend(["x"])

    register_backend("counting-scripted", factory, overwrite=True)
    try:
        rc = main(["eval", "synthetic", "--methods", "direct", "cot", "trained=agent:runs/missing", "--env-llm",
                   "counting-scripted", "--limit", "2", "--output-dir", str(tmp_path / "e"), "--chart", "false"])
    finally:
        BACKENDS.unregister("counting-scripted")
    err = capsys.readouterr().err.strip()
    assert rc == 2 and calls == []
    assert err.count("\n") == 0 and "runs/missing" in err and "no such folder" in err


def test_a_model_folder_without_a_tokenizer_is_named_as_such(tmp_path, tiny):
    from promptr1.agents.models import check_model_name

    model, _ = tiny
    model.save_pretrained(tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        check_model_name(str(tmp_path / "m"))
    with pytest.raises(FileNotFoundError, match="no such folder"):
        check_model_name("./nowhere/model")
    check_model_name("HuggingFaceTB/SmolLM2-135M-Instruct")  # a hub id passes (not looked up here)


def test_dry_run_rejects_what_train_rejects(capsys):
    assert main(["train", "--config", "defaults", "--dry-run", "--max-turns", "0"]) == 2
    assert "(--max-turns) must be a whole number >= 1" in capsys.readouterr().err


# ----------------------------------------------------------------------------- issue 25, item 9: weights, RNG state


def _damage_weights(folder: pathlib.Path, how: str, sentinel: pathlib.Path) -> pathlib.Path:
    """Damage the weights of the model saved in ``folder``; return the file a message must name."""
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    if how == "garbage":
        weights.write_bytes(b"\x00garbage" * 4_000)
    elif how == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    elif how == "one_byte_short":
        weights.write_bytes(data[:-1])
    else:  # the weights as a .bin whose pickle would run code
        from safetensors.torch import load_file

        state = load_file(weights)
        weights.unlink()
        weights = folder / "pytorch_model.bin"
        torch.save({**state, "payload": _RunsCode(sentinel)}, weights)
    return weights


@pytest.mark.parametrize("how", ["garbage", "truncated", "one_byte_short", "pickled_bin"])
def test_damaged_weights_are_refused_in_one_line_naming_the_file(tmp_path, tiny, how):
    """A checkpoint whose model.safetensors is garbage or cut, or whose weights are a pickled .bin, ended in a
    40-line traceback whose text advised weights_only=False. Now: one line naming the file, saying it is not a
    loadable checkpoint; the pickle's code never runs."""
    from promptr1.agents.models import load_policy

    model, tokenizer = tiny
    folder = tmp_path / "ckpt"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    sentinel = tmp_path / "ran"
    bad = _damage_weights(folder, how, sentinel)
    with pytest.raises(CheckpointError) as info:
        load_policy(str(folder))
    message = str(info.value)
    assert repr(str(bad)) in message and "is not a loadable checkpoint" in message
    assert "\n" not in message and "weights_only" not in message
    assert not sentinel.exists()


def test_eval_of_a_checkpoint_with_damaged_weights_exits_2_in_one_line(tmp_path, tiny_path, capsys):
    import shutil

    folder = tmp_path / "run" / "checkpoint-000001"
    shutil.copytree(tiny_path, folder)
    (folder / "trainer_state.json").write_text('{"step": 1}')
    bad = _damage_weights(folder, "garbage", tmp_path / "ran")
    tasks = tmp_path / "qa.jsonl"
    tasks.write_text('{"question": "Say w", "answers": ["w"]}\n', encoding="utf-8")
    rc = main(["eval", str(tasks), "--model", str(tmp_path / "run"), "--methods", "agent", "--env-llm", "sim",
               "--output-dir", str(tmp_path / "out"), "--embedder", "hashing", "--chart", "false"])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    refusal = [line for line in err.splitlines() if "not a loadable checkpoint" in line]
    assert len(refusal) == 1 and str(bad) in refusal[0]


@pytest.mark.parametrize("damage", ["none", "pickle", "garbage", "missing", "not_a_dict"])
def test_an_rng_state_accelerate_would_skip_is_reported(tmp_path, damage):
    """accelerate's load_state skips a random_states_N.pkl it cannot read safely without a word; the trainer asks
    accelerate_rng_problem and says that the RNG state was not restored (see the resume test above)."""
    from accelerate import Accelerator
    from promptr1.agents.checkpoint import accelerate_rng_problem

    state = tmp_path / "accelerate_state"
    Accelerator(cpu=True).save_state(str(state))
    rng = state / "random_states_0.pkl"
    if damage == "pickle":
        torch.save({"random_state": _RunsCode(tmp_path / "ran")}, rng)
    elif damage == "garbage":
        rng.write_bytes(b"not a pickle at all" * 100)
    elif damage == "missing":
        rng.unlink()
    elif damage == "not_a_dict":
        torch.save([1, 2], rng)
    problem = accelerate_rng_problem(state, 0)
    if damage == "none":
        assert problem is None
    else:
        assert problem is not None and str(rng) in problem and "weights_only" not in problem
    assert not (tmp_path / "ran").exists()
