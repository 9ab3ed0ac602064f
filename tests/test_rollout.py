"""Token-in/token-out rollouts on the tiny model with a real (trained) tokenizer and chat template."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from promptr1.agents.rollout import (  # noqa: E402
    ChatFramer,
    RolloutConfig,
    TemplateError,
    collate_episodes,
    run_episodes,
    sample_turns,
)
from promptr1.envs.tasks import Task  # noqa: E402


@pytest.fixture(scope="module")
def tiny():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from promptr1.testing.tiny_model import tiny_model_path

    path = tiny_model_path()
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    model.eval()
    return model, tok


class ReplyEnv:
    """A stand-in env: replies 'reply N' (wrapped) and truncates after ``max_turns`` agent turns."""

    def __init__(self, max_turns: int = 3, fail_on_turn: int | None = None):
        self.max_turns, self.fail_on_turn = max_turns, fail_on_turn
        self.actions: list[str] = []

    def reset(self, seed=None, options=None):
        self.task, self.t, self.actions = options["task"], 0, []
        msgs = [{"role": "system", "content": "You ask the big model."}, {"role": "user", "content": self.task.prompt}]
        return self.task.prompt, {"messages": msgs}

    def step(self, action):
        self.t += 1
        self.actions.append(action)
        if self.fail_on_turn == self.t:
            return "", 0.0, False, True, {"env_error": "timeout: simulated", "reward_components": {"total": 0.0}}
        if self.t >= self.max_turns:
            r = float(len(action) % 3) - 1.0
            return "", r, False, True, {"env_error": None, "reward_components": {"total": r}}
        return f"<interaction_response>reply {self.t}</interaction_response>", 0.0, False, False, {"env_error": None}


TASK = Task(question="What is the capital of the country where Nile flows?", answers=("Cairo",), id="t0")


def _runs(mask):
    """Maximal runs of equal values: [(value, start, end)]."""
    out, start = [], 0
    for i in range(1, len(mask) + 1):
        if i == len(mask) or mask[i] != mask[start]:
            out.append((mask[start], start, i))
            start = i
    return out


def test_three_turn_episode_layout_and_action_mask(tiny):
    model, tok = tiny
    env = ReplyEnv(max_turns=3)
    ep = run_episodes(model, tok, [env], [TASK], [0], RolloutConfig(max_new_tokens=12, max_seq_len=2048),
                      generator=torch.Generator().manual_seed(0))[0]
    assert ep.turns == 3 and ep.done and ep.truncated
    runs = _runs(ep.mask)
    agent_runs = [(s, e) for v, s, e in runs if v == 1]
    assert len(agent_runs) == 3  # three agent turns, separated by context
    assert [v for v, _, _ in runs] == [0, 1, 0, 1, 0, 1]
    # Agent segments decode to exactly the texts the env received (decoded once, never re-encoded).
    for (s, e), action in zip(agent_runs, env.actions):
        assert tok.decode(ep.ids[s:e], skip_special_tokens=True) == action
    # Context segments are the chat template's own rendering: the whole sequence up to the last agent
    # turn equals apply_chat_template of the conversation with the generation prompt.
    framer = ChatFramer(tok)
    last_start = agent_runs[-1][0]
    rendered = framer.render(ep.messages[:-1], True)
    assert tok.decode(ep.ids[:last_start]) == rendered
    # Replies sit in user turns with loss mask 0
    for k in (1, 2):
        v, s, e = runs[2 * k]
        assert v == 0 and f"reply {k}" in tok.decode(ep.ids[s:e])
    # The collated batch carries the same mask, and old log-probs only on agent tokens
    batch = collate_episodes([ep], tok.pad_token_id)
    assert batch["action_mask"][0].tolist() == [float(m) for m in ep.mask]
    assert (batch["old_logp"][0][batch["action_mask"][0] == 0] == 0).all()
    assert (batch["old_logp"][0][batch["action_mask"][0] == 1] < 0).all()


def test_sampler_logprobs_match_transformers_loss(tiny):
    """Our per-token log-probs equal the per-token cross-entropy behind transformers' own loss."""
    model, tok = tiny
    env = ReplyEnv(max_turns=2)
    ep = run_episodes(model, tok, [env], [TASK], [0], RolloutConfig(max_new_tokens=10, max_seq_len=2048),
                      generator=torch.Generator().manual_seed(1))[0]
    ids = torch.tensor([ep.ids])
    labels = torch.full_like(ids, -100)
    act = torch.tensor([ep.mask]).bool()
    labels[act] = ids[act]
    with torch.no_grad():
        loss = model(input_ids=ids, labels=labels).loss  # mean NLL over the agent tokens
        logits = model(input_ids=ids).logits[0, :-1]
    per_token = torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none")  # (T-1,)
    ours = torch.tensor(ep.logp)[act[0]]
    theirs = -per_token[act[0, 1:]]
    torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(-ours.mean(), loss, atol=1e-4, rtol=1e-4)


def test_batched_left_padded_sampling_equals_one_by_one(tiny):
    model, tok = tiny
    prompts = [tok("Question: a b c")["input_ids"], tok("Question: what is the longest river in the world")["input_ids"]]
    batched = sample_turns(model, tok, prompts, max_new_tokens=8, temperature=0.0, stop_strings=())
    for p, b in zip(prompts, batched):
        single = sample_turns(model, tok, [p], max_new_tokens=8, temperature=0.0, stop_strings=())[0]
        assert single.ids == b.ids
        torch.testing.assert_close(torch.tensor(single.logps), torch.tensor(b.logps), atol=1e-4, rtol=1e-4)


def test_same_generator_seed_same_rollout(tiny):
    model, tok = tiny
    outs = []
    for _ in range(2):
        ep = run_episodes(model, tok, [ReplyEnv(2)], [TASK], [0], RolloutConfig(max_new_tokens=10),
                          generator=torch.Generator().manual_seed(7))[0]
        outs.append(ep.ids)
    assert outs[0] == outs[1]


def test_stop_string_ends_the_turn(tiny):
    model, tok = tiny
    prompt = tok("<think>x</think><interaction_prompt>hi")["input_ids"]

    class Forced(torch.nn.Module):
        """Wraps the model and forces the continuation '</interaction_prompt> more text'."""

        def __init__(self, inner, forced):
            super().__init__()
            self.inner, self.forced, self.i = inner, forced, 0

        def forward(self, **kw):
            out = self.inner(**kw)
            tok_id = self.forced[min(self.i, len(self.forced) - 1)]
            self.i += 1
            out.logits[:, -1, :] = -1e4
            out.logits[:, -1, tok_id] = 0.0
            return out

    forced = tok("</interaction_prompt> more text", add_special_tokens=False)["input_ids"]
    s = sample_turns(Forced(model, forced), tok, [prompt], max_new_tokens=20)[0]
    assert s.stop == "string"
    assert tok.decode(s.ids).endswith("</interaction_prompt>")


def test_env_errors_are_flagged(tiny):
    model, tok = tiny
    eps = run_episodes(model, tok, [ReplyEnv(3, fail_on_turn=2), ReplyEnv(3)], [TASK, TASK], [0, 0],
                       RolloutConfig(max_new_tokens=6), generator=torch.Generator().manual_seed(0))
    assert eps[0].env_error and eps[0].turns == 2
    assert eps[1].env_error is None and eps[1].turns == 3


def test_overflowing_episode_is_cut_with_lowest_reward(tiny):
    model, tok = tiny
    framer = ChatFramer(tok)
    n_prompt = len(framer.prompt_ids([{"role": "system", "content": "You ask the big model."},
                                      {"role": "user", "content": TASK.prompt}]))
    ep = run_episodes(model, tok, [ReplyEnv(5)], [TASK], [0],
                      RolloutConfig(max_new_tokens=8, max_seq_len=n_prompt + 20),
                      generator=torch.Generator().manual_seed(0))[0]
    assert ep.overflow and ep.reward == -1.0 and len(ep.ids) <= n_prompt + 20


def test_overflowing_episode_keeps_the_env_llm_calls_it_made(tiny):
    """An episode cut for room still made its env-LLM calls: the trainer's env_llm/calls counts them (it read
    0 where the budget counted 18)."""
    model, tok = tiny
    framer = ChatFramer(tok)
    n_prompt = len(framer.prompt_ids([{"role": "system", "content": "You ask the big model."},
                                      {"role": "user", "content": TASK.prompt}]))

    class CountingEnv(ReplyEnv):
        def step(self, action):
            self.episode_stats = {"env_llm_calls": self.t + 1}
            return super().step(action)

    ep = run_episodes(model, tok, [CountingEnv(5)], [TASK], [0],
                      RolloutConfig(max_new_tokens=8, max_seq_len=n_prompt + 20),
                      generator=torch.Generator().manual_seed(0))[0]
    assert ep.overflow and ep.episode_stats == {"env_llm_calls": ep.turns}


def test_template_that_rewrites_history_is_rejected(tiny):
    _, tok = tiny
    import copy

    bad = copy.deepcopy(tok)
    # A template that drops earlier assistant turns (as some reasoning-model templates do)
    bad.chat_template = (
        "{% for m in messages %}{% if m['role'] != 'assistant' or loop.last %}"
        "<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    with pytest.raises(TemplateError, match="prefix"):
        ChatFramer(bad)


class SlowReplyEnv(ReplyEnv):
    """ReplyEnv whose async step sleeps ``delay`` seconds, or until ``until()`` is true (``delay`` is then a bound
    for a hang); records the order in which steps finished."""

    def __init__(self, delay: float, log: list, name: str, max_turns: int = 3, until=None):
        super().__init__(max_turns=max_turns)
        self.delay, self.log, self.name, self.until = delay, log, name, until

    async def astep(self, action):
        import asyncio
        import time

        if self.until is None:
            await asyncio.sleep(self.delay)
        else:
            t0 = time.monotonic()
            while not self.until() and time.monotonic() - t0 < self.delay:
                await asyncio.sleep(0.005)
        out = self.step(action)
        self.log.append((self.name, self.t, len(self.log)))
        return out


@pytest.mark.parametrize("independent", [True, False])
def test_fast_episodes_do_not_wait_for_a_slow_env_call(tiny, independent):
    """Without a barrier, the fast episodes play all their turns while the slow one's first reply is pending."""
    model, tok = tiny
    log: list = []

    def fast_ones_done() -> bool:  # the slow reply is held until then (when nothing holds the fast ones back)
        return sum(1 for name, turn, _ in log if name != "slow" and turn == 3) == 2

    # independent: the slow call's first reply waits for both fast episodes to finish (at most 60 s, which a
    # barrier would make it wait, and then the order below fails); with the barrier the order holds whatever the
    # timing, so a fixed short delay does
    slow = SlowReplyEnv(60.0, log, "slow", until=fast_ones_done) if independent else SlowReplyEnv(0.5, log, "slow")
    envs = [slow, SlowReplyEnv(0.0, log, "fast-a"), SlowReplyEnv(0.0, log, "fast-b")]
    cfg = RolloutConfig(max_new_tokens=6, max_seq_len=2048, independent=independent, batch_wait_s=0.02)
    eps = run_episodes(model, tok, envs, [TASK] * 3, [0, 0, 0], cfg, generator=torch.Generator().manual_seed(0))
    assert all(ep.done and ep.turns == 3 for ep in eps)
    first_slow = next(t for name, turn, t in log if name == "slow" and turn == 1)
    fast_done = max(t for name, turn, t in log if name != "slow")
    if independent:
        assert fast_done < first_slow  # every fast turn ended before the slow call's first reply
    else:
        fast_turn2 = min(t for name, turn, t in log if name != "slow" and turn == 2)
        assert fast_turn2 > first_slow  # the barrier held turn 2 of the fast episodes back


# Our own restatement of the behaviour of Qwen3's stock chat template that matters here: an assistant turn before
# the last user message is rendered without its <think> block.
QWEN3_LIKE_STOCK_TEMPLATE = (
    "{%- set ns = namespace(last_user=-1) %}"
    "{%- for m in messages %}{%- if m['role'] == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}"
    "{%- endfor %}"
    "{%- for m in messages %}"
    "{%- set content = m['content'] %}"
    "{%- if m['role'] == 'assistant' and loop.index0 < ns.last_user and '</think>' in content %}"
    "{%- set content = content.split('</think>')[-1].lstrip('\\n') %}"
    "{%- endif %}"
    "{{- '<|im_start|>' + m['role'] + '\\n' + content + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)


def test_qwen3_family_gets_a_prefix_preserving_template(tiny):
    """A tokenizer with Qwen3's special tokens and its stock template's habit of dropping earlier <think>
    blocks: the framer recognises the family and renders with our template, leaving the tokenizer as it was."""
    import copy

    from promptr1.agents.rollout import QWEN3_PREFIX_TEMPLATE, template_family

    _, tok = tiny
    qwen3 = copy.deepcopy(tok)
    qwen3.add_tokens(["<think>", "</think>"])
    qwen3.chat_template = QWEN3_LIKE_STOCK_TEMPLATE
    assert template_family(qwen3) == "qwen3" and template_family(tok) is None
    history = [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "<think>t</think>a"},
               {"role": "user", "content": "r"}]
    assert "<think>t</think>" not in qwen3.apply_chat_template(history, tokenize=False)  # the stock behaviour
    framer = ChatFramer(qwen3)
    assert framer.template == QWEN3_PREFIX_TEMPLATE and framer.family == "qwen3"
    assert qwen3.chat_template == QWEN3_LIKE_STOCK_TEMPLATE  # not mutated
    rendered = framer.render(history, True)
    assert rendered == ("<|im_start|>user\nQ<|im_end|>\n<|im_start|>assistant\n<think>t</think>a<|im_end|>\n"
                        "<|im_start|>user\nr<|im_end|>\n<|im_start|>assistant\n")
    frame = framer.reply_text(history[:1], "<think>t</think>a", "r", action_ended_with_eos=False)
    assert frame == "<|im_end|>\n<|im_start|>user\nr<|im_end|>\n<|im_start|>assistant\n"


def test_unknown_family_with_a_history_rewriting_template_is_a_clear_error(tiny):
    import copy

    _, tok = tiny
    other = copy.deepcopy(tok)
    other.chat_template = QWEN3_LIKE_STOCK_TEMPLATE  # the same habit, but no Qwen3 tokens: no known fix
    with pytest.raises(TemplateError, match="Set tokenizer.chat_template"):
        ChatFramer(other)


def _play(model, tok, n, **cfg_kw):
    tasks = [Task(question=f"Question number {i}: where does the river {'Nile ' * (i + 1)}flow?", answers=("x",),
                  id=f"q{i}") for i in range(n)]
    envs = [ReplyEnv(max_turns=4) for _ in tasks]
    timings: dict[str, float] = {}
    cfg = RolloutConfig(max_new_tokens=10, max_seq_len=2048, temperature=0.0, independent=False, **cfg_kw)
    eps = run_episodes(model, tok, envs, tasks, list(range(n)), cfg, timings=timings)
    return eps, envs, timings


def test_kv_reuse_across_turns_gives_the_same_episodes_with_less_prefill(tiny):
    """Greedy episodes of different lengths (left padding in both the cached and the new region) are the same
    with and without the KV cache kept across turns; with it, a turn prefills only its new tokens."""
    model, tok = tiny
    plain, plain_envs, t_plain = _play(model, tok, 3, kv_reuse=False)
    reuse, reuse_envs, t_reuse = _play(model, tok, 3, kv_reuse=True)
    for a, b, ea, eb in zip(plain, reuse, plain_envs, reuse_envs):
        assert a.ids == b.ids and a.mask == b.mask and ea.actions == eb.actions
        assert max(abs(x - y) for x, y in zip(a.logp, b.logp)) < 1e-4
        assert b.cache is None  # dropped once the episode is over
    full = sum(len(e.ids) - e.gen_tokens for e in plain)  # at least the context tokens, each turn re-encoded
    assert t_plain["prefill_tokens"] > t_reuse["prefill_tokens"]
    assert t_reuse["prefill_tokens"] < full + 4 * 3  # new tokens only: context once, plus each turn's last token


@pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")  # the old-style stand-in
def test_kv_cache_is_passed_under_the_name_the_model_takes(tiny, monkeypatch):
    """transformers renamed ``past_key_values`` to ``cache`` (the old name warns, then goes away in 5.40): the
    sampler passes the cache under the name the model's forward declares, and gets the same episodes either way."""
    import transformers.utils.generic as generic

    model, tok = tiny
    said: list[str] = []
    monkeypatch.setattr(generic.logger, "warning_once", lambda msg, *a, **k: said.append(str(msg)))
    new_name, _, _ = _play(model, tok, 2, kv_reuse=True)
    assert not [m for m in said if "past_key_values" in m]

    class OldStyle(torch.nn.Module):
        """A model whose forward knows only the old name (transformers 4.x)."""

        def __init__(self, inner):
            super().__init__()
            self.inner, self.config, self.generation_config = inner, inner.config, inner.generation_config

        def forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                    use_cache=None, logits_to_keep=0):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              past_key_values=past_key_values, use_cache=use_cache, logits_to_keep=logits_to_keep)

    old_name, _, _ = _play(OldStyle(model).eval(), tok, 2, kv_reuse=True)
    assert [e.ids for e in old_name] == [e.ids for e in new_name]


def test_token_budget_splits_generation_batches_with_the_same_result(tiny, monkeypatch):
    model, tok = tiny
    import promptr1.agents.rollout as rollout_mod

    sizes = []
    real = rollout_mod.sample_turns

    def spy(model, tokenizer, prompts, **kw):
        sizes.append((len(prompts), sum(len(p) + 10 for p in prompts)))
        return real(model, tokenizer, prompts, **kw)

    monkeypatch.setattr(rollout_mod, "sample_turns", spy)
    whole, _, _ = _play(model, tok, 4, kv_reuse=True)
    assert sizes[0][0] == 4
    rounds = len(sizes)
    sizes.clear()
    cap = 2 * (max(len(e.ids) for e in whole) + 10)
    capped, _, _ = _play(model, tok, 4, kv_reuse=True, rollout_max_batch_tokens=cap)
    assert all(tokens <= cap or n == 1 for n, tokens in sizes) and len(sizes) > rounds
    assert [e.ids for e in whole] == [e.ids for e in capped]
