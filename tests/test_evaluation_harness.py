"""The evaluation wing on the paper's evaluation sets, through a deterministic oracle backend.

The oracle env LLM answers a question with its gold answer when ``crc32(question) % 4 != 0``
and with a nonsense word otherwise, so the expected metrics are known by construction and
computed here without the harness.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from promptr1.commands.eval import eval_main
from promptr1.evaluation.config import EvalConfig
from promptr1.evaluation.methods import COT_INSTRUCTION, parse_method
from promptr1.evaluation.results import EvalResult
from promptr1.evaluation.runner import run_evaluation
from promptr1.evaluation.scoring import extract_prediction, score_prediction
from promptr1.testing.agents import ScriptedAgentPolicy
from promptr1.rewards.embedders import HashingEmbedder
from promptr1.envs.tasks import load_tasks
from promptr1.llm_backends import Completion, EnvLLMError
from promptr1.llm_backends.base import BaseBackend

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "prompt-r1"
SETS = ["hotpot", "2WikiMultihopQA", "MusiQue", "PopQA", "gsm8k", "DAPO-Math", "BookSum", "WritingPrompts"]
WRONG = "zzqx"
LIMIT = 12

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason="the shared evaluation sets are not present")


def answered(question: str) -> bool:
    return zlib.crc32(question.encode()) % 4 != 0


class Oracle(BaseBackend):
    """Knows every question of the given tasks (raw, or followed by the CoT instruction)."""

    name = "oracle"
    deterministic = True

    def __init__(self, tasks, fail_every: int = 0) -> None:
        super().__init__()
        self.lookup = {}
        for t in tasks:
            self.lookup[t.question.strip()] = t  # the env strips prompts
        self.calls = 0
        self.fail_every = fail_every

    def complete(self, messages, **sampling):
        self.calls += 1
        if self.fail_every and self.calls % self.fail_every == 0:
            raise EnvLLMError("scripted outage", kind="server_error")
        text = messages[-1]["content"]
        cot = text.endswith("\n\n" + COT_INSTRUCTION)
        task = self.lookup[text.removesuffix("\n\n" + COT_INSTRUCTION).strip()]
        ans = task.answers[0].strip() if answered(task.question) else WRONG
        reply = f"Let me think it through.\nAnswer: {ans}" if cot else ans
        return Completion(text=reply, prompt_tokens=7, completion_tokens=3, cost_usd=0.01)


def tasks_of(name: str):
    ts = load_tasks(str(DATA / f"{name}.parquet"))
    return [ts[i] for i in range(LIMIT)]


def expected(name: str) -> dict[str, float]:
    """Expected mean metrics for a dataset, computed by hand from the oracle's rule."""
    tasks = tasks_of(name)
    assert len({t.question for t in tasks}) == len(tasks)  # precondition: the oracle can tell them apart
    ability = tasks[0].ability
    hits = np.array([answered(t.question) for t in tasks], dtype=float)
    if ability == "text":
        emb = HashingEmbedder()
        sims = []
        for t, hit in zip(tasks, hits):
            if hit:
                sims.append(1.0)
            else:
                a, b = emb.encode([WRONG, t.answers[0]])
                sims.append(float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) or 1.0)))
        return {"ssim": float(np.mean(sims))}
    if ability == "math":
        return {"em": float(hits.mean())}
    return {"em": float(hits.mean()), "f1": float(hits.mean())}


def config(tmp_path, **kw) -> EvalConfig:
    base = dict(
        tasks=[str(DATA / f"{s}.parquet") for s in SETS],
        methods=["direct", "cot", "agent:relay"],
        env_llm="oracle",
        output_dir=str(tmp_path / "eval"),
        limit=LIMIT,
        embedder="hashing",
        max_response_chars=20_000,
        concurrency=8,
    )
    base.update(kw)
    return EvalConfig(**base)


def run(cfg: EvalConfig, **kw) -> EvalResult:
    every = [t for s in SETS for t in tasks_of(s)]
    backends = kw.pop("backends", {"oracle": Oracle(every)})
    return run_evaluation(cfg, agents={"relay": ScriptedAgentPolicy.relay()}, backends=backends, **kw)


@pytest.fixture(scope="module")
def full(tmp_path_factory) -> EvalResult:
    return run(config(tmp_path_factory.mktemp("full")))


def test_metrics_match_the_oracle_by_construction(full):
    assert not full.partial and full.stop_reason is None
    assert full.planned == len(SETS) * LIMIT * 3 == len(full.records)
    for name in SETS:
        want = expected(name)
        for method in ("direct", "cot", "agent:relay"):
            for metric, value in want.items():
                got = full.score(name, method, metric)
                assert got == pytest.approx(value, abs=1e-5), (name, method, metric)


def test_rows_carry_counts_costs_and_turns(full):
    for row in full.rows:
        assert row.n == LIMIT and row.errors == 0
        if row.method == "agent:relay":
            assert row.turns == 2 and row.calls == LIMIT  # one prompt turn, one answer turn
        else:
            assert row.turns == 1 and row.calls == LIMIT
        assert row.cost_usd == pytest.approx(0.01 * LIMIT)
        assert row.tokens == 10 * LIMIT
    assert full.calls == len(full.records)


def test_outputs_written(full):
    md = full.paths["report"].read_text()
    assert "**Status:** complete" in md
    for name in SETS:
        assert f"| {name} (" in md
    assert "`agent:relay @ oracle`" in md and "**average**" in md
    png = full.paths["chart"].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 2000
    lines = full.paths["transcripts"].read_text().splitlines()
    assert len(lines) == full.planned
    rec = json.loads(lines[0])
    for key in (
        "dataset",
        "method",
        "env_llm",
        "question",
        "gold",
        "turns",
        "prediction",
        "metrics",
        "env_error",
        "latency_s",
        "tokens",
        "cost_usd",
    ):
        assert key in rec
    agent = next(json.loads(x) for x in lines if json.loads(x)["method"] == "agent:relay")
    assert [m["role"] for m in agent["turns"]] == ["system", "user", "assistant", "user", "assistant"]
    summary = json.loads(full.paths["summary"].read_text())
    assert summary["partial"] is False and summary["finished"] == full.planned


def test_budget_stop_then_resume_gives_the_uninterrupted_report(tmp_path, full):
    cfg = config(tmp_path, max_calls=100)
    first = run(cfg)
    assert first.partial and "max_calls=100" in first.stop_reason
    assert first.calls <= 100 and len(first.records) <= 100
    md = first.paths["report"].read_text()
    assert "PARTIAL" in md
    second = run(config(tmp_path, max_calls=150))
    assert second.partial and len(second.records) > len(first.records)
    final = run(config(tmp_path))
    assert not final.partial
    assert final.calls == full.planned - len(second.records)  # finished keys were skipped
    table = lambda r: r.paths["report"].read_text().split("## Scores")[1].split("## Cost")[0]
    assert table(final) == table(full)
    assert [(r.dataset, r.method, r.metrics) for r in final.rows] == [
        (r.dataset, r.method, r.metrics) for r in full.rows
    ]


def test_max_cost_stops_cleanly(tmp_path):
    res = run(config(tmp_path, max_cost=0.5, methods=["direct"]))
    assert res.partial and "max_cost" in res.stop_reason
    assert 0.5 <= res.cost_usd <= 0.5 + 0.01 * 8  # at most the calls already in flight
    assert "PARTIAL" in res.paths["report"].read_text()


def test_env_errors_are_not_scored_and_are_retried(tmp_path):
    every = [t for s in SETS[:2] for t in tasks_of(s)]
    cfg = config(tmp_path, tasks=[str(DATA / f"{s}.parquet") for s in SETS[:2]], methods=["direct"])
    res = run(cfg, backends={"oracle": Oracle(every, fail_every=5)})
    n_err = sum(1 for r in res.records if r["env_error"])
    assert n_err == (2 * LIMIT) // 5 and sum(r.errors for r in res.rows) == n_err
    assert all(r["metrics"] == {} for r in res.records if r["env_error"])
    assert "env-LLM failures" in res.paths["report"].read_text()
    again = run(cfg, backends={"oracle": Oracle(every)})
    assert again.calls == n_err and sum(r.errors for r in again.rows) == 0
    for name in SETS[:2]:
        assert again.score(name, "direct", "em") == pytest.approx(expected(name)["em"])


def test_transfer_rows_and_log_to(tmp_path):
    every = [t for s in SETS[:1] for t in tasks_of(s)]
    cfg = config(
        tmp_path,
        tasks=[str(DATA / "hotpot.parquet")],
        methods=["trained=agent:relay"],
        env_llm="oracle",
        transfer_env_llms=["other"],
    )
    res = run(cfg, backends={"oracle": Oracle(every), "other": Oracle(every)})
    assert {(r.method, r.env_llm) for r in res.rows} == {("trained", "oracle"), ("trained", "other")}
    logged: dict[str, float] = {}
    res.log_to(lambda k, v: logged.__setitem__(k, v), step=3)
    assert logged["eval/hotpot/f1/trained@oracle"] == pytest.approx(expected("hotpot")["f1"])
    assert "eval/average/trained@other" in logged

    class Writer:
        def __init__(self):
            self.seen = []

        def add_scalar(self, key, value, step):
            self.seen.append((key, value, step))

    w = Writer()
    res.log_to(w, step=7)
    assert len(w.seen) == len(logged) and all(s == 7 for _, _, s in w.seen)


def test_resume_refuses_changed_episode_settings(tmp_path):
    cfg = config(tmp_path, tasks=[str(DATA / "hotpot.parquet")], methods=["direct"], limit=2)
    run(cfg)
    with pytest.raises(ValueError, match="max_turns=5 .now 3"):
        run(config(tmp_path, tasks=[str(DATA / "hotpot.parquet")], methods=["direct"], limit=2, max_turns=3))
    res = run(
        config(
            tmp_path,
            tasks=[str(DATA / "hotpot.parquet")],
            methods=["direct"],
            limit=2,
            max_turns=3,
            overwrite=True,
        )
    )
    assert res.calls == 2


def test_jsonl_tasks_and_cli(tmp_path, capsys):
    path = tmp_path / "mine.jsonl"
    rows = [
        {"question": "What is 6 * 7?", "answers": ["42"], "data_source": "arith"},
        {"question": "Capital of France?", "answers": ["Paris"]},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "cli"
    common = ["--env-llm", "echo", "--embedder", "hashing", "--chart", "false", "--progress", "false"]
    code = eval_main([str(path), "--methods", "direct", "--output-dir", str(out), *common])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| mine (" in printed and "`direct @ echo`" in printed
    recs = [json.loads(x) for x in (out / "transcripts.jsonl").read_text().splitlines()]
    assert [r["prediction"] for r in recs] == ["7", "You said: Capital of France?"]  # math: last number
    assert not (out / "chart.png").exists()
    code = eval_main([str(path), "--methods", "direct", "--output-dir", str(tmp_path / "b"), "--max-calls", "1",
                      *common])
    assert code == 3  # partial: the budget stopped it
    assert "PARTIAL" in capsys.readouterr().out
    assert eval_main([str(path), "--methods", "dirct"]) == 2
    assert "Did you mean 'direct'" in capsys.readouterr().err
    assert eval_main([str(tmp_path / "nope.parquet"), "--output-dir", str(tmp_path / "c"), *common]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert eval_main(["--help"]) == 0
    assert eval_main([str(path), "--tasks", str(path)]) == 2  # positional files and --tasks: ambiguous
    assert "not both" in capsys.readouterr().err
    assert eval_main([str(path), "--max-trns", "3"]) == 2
    assert "--max-turns" in capsys.readouterr().err
    code = eval_main(["--tasks", str(path), "--methods", "cot", "--output-dir", str(out), *common])
    assert code == 0 and len((out / "transcripts.jsonl").read_text().splitlines()) == 4  # resumed: direct + cot


def test_yaml_config_and_cli_give_the_same_run(tmp_path, capsys):
    path = tmp_path / "mine.jsonl"
    path.write_text(json.dumps({"question": "Capital of France?", "answers": ["You said: Capital of France?"]}))
    yaml_file = tmp_path / "eval.yaml"
    yaml_file.write_text(
        f"tasks: [{path}]\nmethods: [direct, cot]\nenv_llm: echo\ntransfer_env_llms: [scripted]\n"
        f"output_dir: {tmp_path / 'y'}\nembedder: hashing\nchart: false\nprogress: false\n"
    )
    assert eval_main(["--config", str(yaml_file)]) == 0
    summary = json.loads((tmp_path / "y" / "summary.json").read_text())
    assert {(t["method"], t["env_llm"]) for t in summary["table"]} == {
        ("direct", "echo"), ("cot", "echo"), ("direct", "scripted"), ("cot", "scripted")}
    direct_echo = next(t for t in summary["table"] if t["method"] == "direct" and t["env_llm"] == "echo")
    assert direct_echo["em"]["mean"] == 1.0 and direct_echo["episodes"] == 1


def test_empty_prediction_scores_zero():
    assert score_prediction("", ["Paris"], "qa") == {"em": 0.0, "sm": 0.0, "f1": 0.0}
    assert score_prediction("   ", ["0"], "math") == {"em": 0.0}
    assert score_prediction("", ["a long story"], "text", embedder=HashingEmbedder()) == {"ssim": 0.0}


def test_extraction_and_method_parsing():
    assert extract_prediction("<think>x</think><answer>Rome</answer>", "qa") == "Rome"
    assert extract_prediction("reasoning\nFinal Answer: **42**", "math", cot=True) == "42"
    assert extract_prediction("We get 1,200 apples.\nSo 1,250", "math") == "1,250"
    assert score_prediction(extract_prediction("so it is 1,250", "math"), ["1250"], "math") == {"em": 1.0}
    assert parse_method("direct").kind == "direct"
    assert parse_method("agent", default_model="runs/x").model == "runs/x"
    with pytest.raises(ValueError, match="Did you mean 'direct'"):
        parse_method("dirct")
    with pytest.raises(ValueError, match="share a label"):
        EvalConfig(tasks=["synthetic:test"], methods=["direct", "x=direct", "x=cot"])


@pytest.mark.slow
def test_smollm2_as_env_llm_on_a_few_questions(tmp_path):
    pytest.importorskip("transformers")
    from promptr1.llm_backends.smollm2 import smollm2_gguf_path

    try:
        smollm2_gguf_path()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    cfg = EvalConfig(
        tasks=[str(DATA / "hotpot.parquet"), str(DATA / "gsm8k.parquet")],
        methods=["direct", "cot", "agent:relay"],
        env_llm="smollm2",
        output_dir=str(tmp_path / "smol"),
        limit=1,
        env_max_tokens=32,
        embedder="hashing",
        concurrency=2,
    )
    res = run_evaluation(cfg, agents={"relay": ScriptedAgentPolicy.relay()})
    assert not res.partial and len(res.records) == 6
    assert all(r["env_error"] is None and r["env_llm_calls"] == 1 for r in res.records)
    replies = [r["turns"][-2 if r["method"] == "agent:relay" else -1]["content"] for r in res.records]
    assert all(reply.strip() for reply in replies)  # SmolLM2 said something
    assert all(0.0 <= v <= 1.0 for r in res.records for v in r["metrics"].values())
    assert res.paths["report"].is_file() and res.paths["chart"].is_file()


def test_tiny_model_agent_on_a_shared_set(tmp_path):
    """``agent:tiny`` is loaded by name (the one model resolver) and played by the rollout."""
    cfg = EvalConfig(
        tasks=[str(DATA / "PopQA.parquet")],
        methods=["agent:tiny"],
        env_llm="echo",
        output_dir=str(tmp_path / "tiny"),
        limit=2,
        max_turns=2,
        max_new_tokens=16,
        max_seq_len=1024,
        temperature=0.0,
        embedder="hashing",
        chart=False,
        cpu=True,
    )
    res = run_evaluation(cfg)
    assert not res.partial and len(res.records) == 2
    assert all(1 <= r["num_turns"] <= 2 and r["turns"][2]["role"] == "assistant" for r in res.records)
    assert all(r["reward"] is not None and r["format"] in (0.0, 1.0) for r in res.records)
    row = res.row("PopQA", "agent:tiny")
    assert {"reward", "format", "turns"} <= set(row.stats)


class Down(BaseBackend):
    """The oracle's name, but every call fails: only a cache can answer."""

    name = "oracle"

    def complete(self, messages, **sampling):
        raise EnvLLMError("endpoint down", kind="connection")


def test_cache_replays_env_llm_calls(tmp_path):
    cache = str(tmp_path / "cache.sqlite")
    kw = dict(tasks=[str(DATA / "hotpot.parquet")], methods=["direct", "agent:relay"], cache=cache)
    first = run(config(tmp_path, **kw), backends={"oracle": Oracle(tasks_of("hotpot"))})
    assert first.calls == 2 * LIMIT
    kw["output_dir"] = str(tmp_path / "again")
    second = run(config(tmp_path, cache_mode="replay", **kw), backends={"oracle": Down()})
    assert second.calls == 0 and not second.partial
    assert all(r["env_error"] is None for r in second.records)
    assert [r.metrics for r in second.rows] == [r.metrics for r in first.rows]
