"""One episode engine: the training rollout, SFT demonstrations, evaluation's text policies, the TRL rollout (and,
in tests/test_integration_verl.py, the verl loop) play the same scripted episode into the same tokens, masks,
rewards and transcripts."""

from __future__ import annotations

import asyncio
import json
import types

import pytest

from promptr1.agents.episode import agent_turn, record_step, start_episode
from promptr1.agents.rollout import (ChatFramer, EpisodeFeed, RolloutConfig, SampledTurn, arun_episodes,
                                     run_episodes)
from promptr1.agents.sft import build_sft_example
from promptr1.envs.collab_env import PromptCollabEnv
from promptr1.envs.framing import FRAMINGS
from promptr1.envs.step_info import StepInfo
from promptr1.envs.tasks import Task
from promptr1.evaluation.policies import TextPolicyPlayer
from promptr1.testing.agents import ScriptedAgentPolicy
from promptr1.testing.scripted import ScriptedBackend

TASK = Task("Who founded Vantrel Corp?", ("Mira Osk",), id="t0")
CALL = json.dumps({"name": "prompt", "arguments": {"prompt": "Who founded Vantrel Corp?"}})
MAX_SEQ_LEN = 2048


def turns_for(framing: str) -> list[str]:
    """The scripted agent's turns as the env receives them (under the reference framing the second opens with the
    ``<think>\\n`` prefill, which is context, not agent tokens)."""
    second = "It said Mira Osk.</think><answer>Mira Osk</answer>"
    prefill = FRAMINGS.get(framing).turn_prefill or ""
    return [f"<think>Ask.</think><interaction_prompt>{CALL}</interaction_prompt>",
            prefill + (second if prefill else "<think>" + second)]


def make_env(framing: str) -> PromptCollabEnv:
    return PromptCollabEnv(task=[TASK], env_llm=ScriptedBackend(["Mira Osk founded Vantrel Corp."]),
                           framing=framing, max_turns=3)


def scripted_sampler(framing: str, tok):
    """A sampler with ``sample_turns``' signature that returns the scripted turns' agent tokens, one per call."""
    prefill = FRAMINGS.get(framing).turn_prefill or ""
    bodies = [t[len(prefill):] if i and prefill else t for i, t in enumerate(turns_for(framing))]
    calls = iter(bodies)

    def sampler(model, tokenizer, prompts, **kw):
        body = next(calls)
        ids = tokenizer(body, add_special_tokens=False)["input_ids"]
        return [SampledTurn(list(ids), [-0.5] * len(ids), "string") for _ in prompts]

    return sampler


def agent_ids(framing: str, tok) -> list[list[int]]:
    """The agent tokens of each turn, tokenized by hand (not through the engine)."""
    prefill = FRAMINGS.get(framing).turn_prefill or ""
    bodies = [t[len(prefill):] if i and prefill else t for i, t in enumerate(turns_for(framing))]
    return [tok(b, add_special_tokens=False)["input_ids"] for b in bodies]


def summary(ep, *, tokens: bool = True) -> dict:
    out = {"messages": ep.messages, "reward": ep.reward, "components": ep.components, "turns": ep.turns,
           "terminated": ep.terminated, "env_error": ep.env_error}
    if tokens:
        out.update(ids=ep.ids, mask=ep.mask, prompt_len=ep.prompt_len,
                   segments=[(list(i), a) for i, a in ep.segments])
    return out


@pytest.fixture(scope="module")
def tok():
    from transformers import AutoTokenizer

    from promptr1.testing.tiny_model import tiny_model_path

    return AutoTokenizer.from_pretrained(tiny_model_path())


def play_rollout(framing, tok):
    cfg = RolloutConfig(max_new_tokens=64, max_seq_len=MAX_SEQ_LEN, stop_strings=FRAMINGS.get(framing).stop_strings)
    return run_episodes(None, tok, [make_env(framing)], [TASK], [0], cfg, sampler=scripted_sampler(framing, tok))[0]


def play_sft(framing, tok):
    return build_sft_example(make_env(framing), TASK, turns_for(framing), ChatFramer(tok))


def play_text(framing):
    player = TextPolicyPlayer(ScriptedAgentPolicy(turns_for(framing)))
    return asyncio.run(player.aplay([make_env(framing)], [TASK]))[0]


def play_trl(framing, tok):
    pytest.importorskip("trl")
    from promptr1.integrations import trl as ptrl

    rollout = ptrl.make_rollout_func([TASK], env_factory=lambda: make_env(framing), env_kwargs={"framing": framing},
                                     sampler=scripted_sampler(framing, tok), max_seq_len=MAX_SEQ_LEN)
    rollout._checked = True  # TRL's settings check reads a real trainer's accelerator
    rollout._generation_model = lambda trainer: _nullcontext()
    trainer = types.SimpleNamespace(
        args=types.SimpleNamespace(temperature=1.0, top_p=1.0, repetition_penalty=1.0, max_completion_length=64),
        processing_class=tok, accelerator=types.SimpleNamespace(process_index=0),
        state=types.SimpleNamespace(global_step=0), use_vllm=False)
    prompt = ptrl.tasks_to_dataset([TASK], env_kwargs={"framing": framing})[0]["prompt"]
    out = rollout([prompt], trainer)
    ep = rollout.last_episodes[0]
    assert out["completion_ids"][0] == ep.ids[ep.prompt_len:] and out["env_mask"][0] == ep.mask[ep.prompt_len:]
    return ep


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


@pytest.mark.parametrize("framing", ["ours", "reference"])
def test_every_path_plays_the_same_episode(framing, tok):
    rollout = play_rollout(framing, tok)
    # known by construction: two well-formed turns, the right answer
    assert rollout.reward == pytest.approx(1.0) and rollout.terminated and rollout.turns == 2
    assert [m["role"] for m in rollout.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert [rollout.messages[i]["content"] for i in (-3, -1)] == turns_for(framing)
    # the agent tokens are exactly the turns' tokens (the prefill is context), in order
    agent = [ids for ids, is_agent in rollout.segments if is_agent]
    assert agent == agent_ids(framing, tok)
    assert sum(rollout.mask) == sum(len(a) for a in agent)

    expected = summary(rollout)
    assert summary(play_sft(framing, tok)) == expected
    assert summary(play_trl(framing, tok)) == expected
    assert summary(play_text(framing), tokens=False) == summary(rollout, tokens=False)


def test_record_step_reads_the_env_through_step_info(tok):
    env = make_env("reference")
    framer = ChatFramer(tok)
    ep = start_episode(env, TASK, framer=framer)
    text = agent_turn(ep, turns_for("reference")[0], framer)
    assert record_step(ep, text, env.step(text), framer=framer)
    assert ep.prefill == "<think>\n" and isinstance(ep.last_step, StepInfo)
    assert ep.last_step.parsed_prompt == "Who founded Vantrel Corp?" and ep.last_step.turn == 1
    # the reply's frame ends with the prefill: the next agent tokens continue after it
    assert tok.decode(ep.ids[-4:]).endswith("<think>\n")


def test_overflow_ends_the_episode_with_the_lowest_reward(tok):
    env = make_env("ours")
    framer = ChatFramer(tok)
    ep = start_episode(env, TASK, framer=framer)
    text = agent_turn(ep, turns_for("ours")[0], framer)
    assert not record_step(ep, text, env.step(text), framer=framer, max_seq_len=len(ep.ids) + 3)
    assert ep.overflow and ep.truncated and ep.reward == -1.0


def test_a_prompt_longer_than_max_seq_len_is_refused(tok):
    with pytest.raises(ValueError, match="raise max_seq_len"):
        start_episode(make_env("ours"), TASK, framer=ChatFramer(tok), max_seq_len=8)


# ----------------------------------------------------------------------------- episodes joining a running rollout


def play_fed(framing, tok, *, tasks=(TASK,), cancel=(), timings=None):
    """Play ``tasks`` through an open rollout (an :class:`EpisodeFeed`, as ``promptr1 serve`` does); the futures of
    the indices in ``cancel`` are cancelled before the loop starts. Returns each future's outcome and the events the
    listener heard."""
    cfg = RolloutConfig(max_new_tokens=64, max_seq_len=MAX_SEQ_LEN, stop_strings=FRAMINGS.get(framing).stop_strings,
                        independent=False)
    events = []

    async def go():
        feed = EpisodeFeed()
        futures = [feed.put(make_env(framing), task) for task in tasks]
        for i in cancel:
            futures[i].cancel()
        loop = asyncio.ensure_future(arun_episodes(
            None, tok, [], [], [], cfg, sampler=scripted_sampler(framing, tok), feed=feed, timings=timings,
            listener=lambda event, ep, text: events.append((event, ep.task.id, text)), offload=True))
        outcomes = await asyncio.gather(*futures, return_exceptions=True)
        feed.close()
        assert await loop == []  # an open loop returns only the episodes it was given up front
        return outcomes

    return asyncio.run(go()), events


@pytest.mark.parametrize("framing", ["ours", "reference"])
def test_a_fed_episode_plays_as_the_closed_rollout_does(framing, tok):
    (ep,), events = play_fed(framing, tok)
    assert summary(ep) == summary(play_rollout(framing, tok))
    # the listener hears each agent turn before its env call, then the step
    assert [e[0] for e in events] == ["turn", "step", "turn", "step"]
    assert [e[2] for e in events if e[0] == "turn"] == turns_for(framing)


def test_episodes_fed_together_share_generation_batches(tok):
    timings = {}
    tasks = [TASK, Task("Who founded Vantrel Corp?", ("Mira Osk",), id="t1"),
             Task("Who founded Vantrel Corp?", ("Mira Osk",), id="t2")]
    episodes, _ = play_fed("ours", tok, tasks=tasks, timings=timings)
    assert [ep.task.id for ep in episodes] == ["t0", "t1", "t2"] and all(ep.reward == 1.0 for ep in episodes)
    # three episodes of two turns: two batches of three, not six of one
    assert timings["generate_batches"] == 2 and timings["generate_episodes"] == 6


def test_a_cancelled_or_failing_episode_leaves_the_others_playing(tok):
    timings = {}
    too_long = Task("x " * 5000, ("y",), id="long")
    outcomes, _ = play_fed("ours", tok, tasks=[TASK, too_long, TASK], cancel=[2], timings=timings)
    assert outcomes[0].reward == 1.0
    assert isinstance(outcomes[1], ValueError) and "raise max_seq_len" in str(outcomes[1])
    assert isinstance(outcomes[2], asyncio.CancelledError)
    assert timings["generate_episodes"] == 2  # only the first episode was generated for, once a turn


def test_fed_episodes_share_the_system_prompts_cache_and_play_the_same(tok):
    """``share_system_prefix``: the system message's tokens are prefilled once for every fed episode; greedy turns
    are the same as when each episode prefills its whole prompt."""
    from transformers import AutoModelForCausalLM

    from promptr1.testing.tiny_model import tiny_model_path

    model = AutoModelForCausalLM.from_pretrained(tiny_model_path()).eval()
    cfg = RolloutConfig(max_new_tokens=12, max_seq_len=MAX_SEQ_LEN, temperature=0.0, independent=False)
    tasks = [Task(f"Who founded company number {i}?", ("x",), id=f"q{i}") for i in range(3)]

    def play(share: bool):
        timings = {}

        async def go():
            feed = EpisodeFeed()
            futures = [feed.put(make_env("ours"), t) for t in tasks]
            loop = asyncio.ensure_future(arun_episodes(model, tok, [], [], [], cfg, feed=feed, timings=timings,
                                                       share_system_prefix=share))
            eps = await asyncio.gather(*futures)
            feed.close()
            await loop
            return eps

        return asyncio.run(go()), timings

    shared, t_shared = play(True)
    plain, t_plain = play(False)
    assert [summary(e) for e in shared] == [summary(e) for e in plain]
    framer = ChatFramer(tok)
    system = len(framer.encode(framer.render(shared[0].messages[:1], False)))
    assert system > 10 and t_plain["prefill_tokens"] - t_shared["prefill_tokens"] == 3 * system


def test_callers_that_ask_again_at_once_join_the_waiting_episodes_round(tok):
    """Steady callers do not split into alternating half batches: after a round whose episodes finished, the loop
    lets their callers' next episodes arrive (``batch_wait_s``) and generates them with those already waiting."""
    answer = "<think>x</think><answer>y</answer>"
    cfg = RolloutConfig(max_new_tokens=64, max_seq_len=MAX_SEQ_LEN, independent=True, batch_wait_s=0.01)
    timings, rounds = {}, []

    async def go():
        loop = asyncio.get_running_loop()
        feed = EpisodeFeed()

        def sampler(model, tokenizer, prompts, **kw):  # runs in a worker thread (offload)
            rounds.append(len(prompts))
            if len(rounds) == 1:  # a third caller arrives while the first round generates
                loop.call_soon_threadsafe(lambda: late.append(feed.put(make_env("ours"), TASK)))
            ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
            return [SampledTurn(list(ids), [-0.5] * len(ids), "string") for _ in prompts]

        late = []
        engine = asyncio.ensure_future(arun_episodes(None, tok, [], [], [], cfg, sampler=sampler, feed=feed,
                                                     timings=timings, offload=True))

        async def caller():  # asks, and asks again as soon as it has its answer
            await feed.put(make_env("ours"), TASK)
            await feed.put(make_env("ours"), TASK)

        await asyncio.gather(caller(), caller())
        await late[0]
        feed.close()
        await engine

    asyncio.run(go())
    assert rounds == [2, 3]  # not [2, 1, 2]
    assert timings["generate_batches"] == 2 and timings["generate_episodes"] == 5
