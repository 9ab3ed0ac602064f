"""Multi-turn rollouts, token in and token out.

The agent's turns are sampled from token ids and kept as token ids with their per-token
log-probs; they are decoded only to hand the text to the environment, never re-encoded. The
environment's reply is tokenized once and spliced into the sequence with loss mask 0, framed by
the tokenizer's *own* chat template (:class:`ChatFramer`), so any chat model works, not only
ChatML ones.

Episodes advance independently: each generation round batches every episode that waits for an
agent turn (left-padded, KV-cached sampling in :func:`sample_turns`); the environment calls of
that round run concurrently (``asyncio.gather`` over ``env.astep``). Episodes whose env LLM
failed (``info["env_error"]``) are kept but flagged; the trainer drops them from their group.

Layout of one finished episode (``Episode.ids``; ``mask`` is 1 on agent tokens)::

    [system+user prompt, rendered by the template][agent turn 1][frame + env reply 1 + frame][agent turn 2]...
     mask 0                                        mask 1        mask 0                        mask 1
"""

from __future__ import annotations

import asyncio
import inspect
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from promptr1.agents.episode import Episode, env_step, record_step, start_episode
from promptr1.core.settings import DecodingSettings
from promptr1.core.tags import STOP_STRINGS

__all__ = [
    "DEFAULT_STOP_STRINGS",
    "PREFIX_TEMPLATES",
    "QWEN3_PREFIX_TEMPLATE",
    "ChatFramer",
    "Episode",
    "EpisodeFeed",
    "RolloutConfig",
    "TemplateError",
    "collate_episodes",
    "end_token_ids",
    "rollout_config",
    "run_episodes",
    "stop_strings_for",
    "sample_turns",
    "template_family",
]

#: An agent turn ends at the closing tag of a request or of an answer (or at the EOS token).
DEFAULT_STOP_STRINGS: tuple[str, ...] = STOP_STRINGS


class TemplateError(ValueError):
    """The tokenizer's chat template cannot be used for token-in/token-out multi-turn rollouts."""


#: Our prefix-preserving ChatML template for Qwen3-family agents. Qwen3's stock template drops the
#: ``<think>`` block of assistant turns before the last user message, so a conversation's rendering is not a
#: prefix of its continuation's; this one renders every message verbatim in the same ChatML frame.
QWEN3_PREFIX_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

#: Known families whose stock template rewrites history, and our prefix-preserving replacement.
PREFIX_TEMPLATES: dict[str, str] = {"qwen3": QWEN3_PREFIX_TEMPLATE}


def template_family(tokenizer: Any) -> str | None:
    """The chat-template family of a tokenizer, when we know one: ``qwen3`` has ChatML's ``<|im_start|>`` /
    ``<|im_end|>`` special tokens and ``<think>`` / ``</think>`` as added tokens."""
    try:
        added = set(tokenizer.get_added_vocab())
    except Exception:  # noqa: BLE001 - a tokenizer without added-vocab support has no known family
        return None
    if {"<|im_start|>", "<|im_end|>", "<think>", "</think>"} <= added:
        return "qwen3"
    return None


# ----------------------------------------------------------------------------- chat framing


class ChatFramer:
    """Frames env replies as user turns with the tokenizer's own chat template.

    For a conversation prefix ``P`` (rendered with the generation prompt), an agent turn ``a``
    and a reply ``r``, the frame is the text that rendering ``P + [assistant a, user r]`` adds
    after ``render(P) + a``: the end of the assistant turn, the user turn holding ``r``, and the
    next generation prompt. This needs the template to render a conversation's prefix as a
    string prefix of the whole conversation; the constructor checks that once and raises
    :class:`TemplateError` if it does not hold (templates that drop earlier ``<think>`` blocks,
    or that trim the assistant's text, break it).
    """

    def __init__(self, tokenizer: Any) -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise TemplateError(
                "the agent's tokenizer has no chat template; expected a chat/instruct model (e.g. "
                "SmolLM2-135M-Instruct). Set tokenizer.chat_template before training."
            )
        self.tokenizer = tokenizer
        eos = tokenizer.eos_token_id
        self.eos_text = tokenizer.decode([eos]) if eos is not None else ""
        self.template: str | None = None  # None: the tokenizer's own
        try:
            self._check_prefix_property()
        except TemplateError:
            family = template_family(tokenizer)
            if family is None:
                raise
            # The stock template of a known family rewrites history: use our prefix-preserving one (the
            # tokenizer itself is not changed).
            self.template = PREFIX_TEMPLATES[family]
            self.family = family
            self._check_prefix_property()

    def render(self, messages: Sequence[dict[str, str]], generation_prompt: bool) -> str:
        kw = {"chat_template": self.template} if self.template is not None else {}
        return self.tokenizer.apply_chat_template(
            list(messages), tokenize=False, add_generation_prompt=generation_prompt, **kw
        )

    def _check_prefix_property(self) -> None:
        probe = [
            {"role": "system", "content": "sys"},
            {"role": "user", "content": "Question: q"},
        ]
        turn = "<think>t</think><interaction_prompt>p</interaction_prompt>"
        base = self.render(probe, True)
        full = self.render(probe + [{"role": "assistant", "content": turn},
                                    {"role": "user", "content": "<interaction_response>r</interaction_response>"}], True)
        if not full.startswith(base + turn):
            raise TemplateError(
                "the tokenizer's chat template does not keep earlier turns verbatim: rendering "
                "[system, user] with the generation prompt is not a prefix of rendering "
                "[system, user, assistant, user] followed by the assistant's text.\n"
                f"  prefix rendered: {base!r}\n  whole rendered:  {full!r}\n"
                "Token-in/token-out rollouts need that property; use a template that does not "
                "rewrite earlier assistant turns (ChatML as in Qwen2/SmolLM2 works; Qwen3-family "
                "tokenizers are recognised and get a prefix-preserving template automatically). Set "
                "tokenizer.chat_template to such a template."
            )

    def prompt_ids(self, messages: Sequence[dict[str, str]]) -> list[int]:
        """Token ids of the opening chat (system + user) with the generation prompt."""
        return self.encode(self.render(messages, True))

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def reply_text(self, history: Sequence[dict[str, str]], action_text: str, reply: str,
                   action_ended_with_eos: bool) -> str:
        """The text to splice after the agent's tokens: end of its turn, the reply, next prompt.

        ``history`` is the chat up to (not including) the agent turn ``action_text``.
        """
        base = self.render(history, True) + action_text
        full = self.render(list(history) + [{"role": "assistant", "content": action_text},
                                            {"role": "user", "content": reply}], True)
        if not full.startswith(base):
            raise TemplateError(
                "the chat template rewrote an earlier part of the conversation while adding a "
                f"reply (agent turn {action_text[:80]!r}); token-in/token-out framing is impossible "
                "with this template."
            )
        frame = full[len(base):]
        if action_ended_with_eos and self.eos_text and frame.startswith(self.eos_text):
            frame = frame[len(self.eos_text):]  # the agent already emitted the end-of-turn token
        return frame


# ----------------------------------------------------------------------------- sampling


@dataclass
class SampledTurn:
    ids: list[int]
    logps: list[float]
    stop: str  # "eos", "string", or "length"
    #: The KV cache of this row after the turn, one ``(keys, values)`` pair per layer, each ``(1, H, L, D)``,
    #: covering the prompt and the generated tokens that were fed back (all but the last); None when not kept.
    cache: tuple[tuple[torch.Tensor, torch.Tensor], ...] | None = None


KVCache = tuple[tuple[torch.Tensor, torch.Tensor], ...]


def cache_length(cache: KVCache | None) -> int:
    return 0 if not cache else int(cache[0][0].shape[2])


def crop_cache(cache: KVCache | None, length: int) -> KVCache | None:
    """The first ``length`` positions of a per-episode cache (None when nothing is left)."""
    if cache is None or length <= 0:
        return None
    if cache_length(cache) <= length:
        return cache
    return tuple((k[:, :, :length], v[:, :, :length]) for k, v in cache)


def move_cache(cache: KVCache | None, device: Any) -> KVCache | None:
    if cache is None:
        return None
    return tuple((k.to(device, non_blocking=True), v.to(device, non_blocking=True)) for k, v in cache)


def _cache_kwarg(model: Any) -> str:
    """The forward keyword that takes the KV cache: ``cache`` (transformers >= 5.x renamed it; the old name
    warns and goes away in 5.40) or ``past_key_values`` (older releases, and wrappers that do not name it)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        params = inspect.signature(base.forward).parameters
    except (TypeError, ValueError):  # pragma: no cover - a forward without a signature
        return "past_key_values"
    return "cache" if "cache" in params else "past_key_values"


def _out_cache(out: Any) -> Any:
    """The KV cache a forward pass returned, under either of its names (see :func:`_cache_kwarg`)."""
    cache = out.get("cache") if hasattr(out, "get") else None
    return cache if cache is not None else out.past_key_values


def _batch_cache(caches: Sequence[KVCache | None], width: int, device: Any) -> Any:
    """Per-episode caches right-aligned into one ``DynamicCache`` of ``width`` positions (zeros before them)."""
    from transformers import DynamicCache

    ref = next(c for c in caches if c)
    layers = []
    for layer, (k0, v0) in enumerate(ref):
        K = k0.new_zeros(len(caches), k0.shape[1], width, k0.shape[3], device=device)
        V = v0.new_zeros(len(caches), v0.shape[1], width, v0.shape[3], device=device)
        for i, c in enumerate(caches):
            if c:
                n = c[layer][0].shape[2]
                K[i, :, width - n:] = c[layer][0][0].to(device)
                V[i, :, width - n:] = c[layer][1][0].to(device)
        layers.append((K, V))
    return DynamicCache(ddp_cache_data=layers)


def _reusable(past: Any) -> bool:
    """Only plain per-layer caches (no sliding windows, no recurrent state) can be split and re-joined."""
    layers = getattr(past, "layers", None)
    return bool(layers) and all(type(layer).__name__ == "DynamicLayer" for layer in layers)


def _top_p_filter(logits: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, idx = torch.sort(logits, descending=True, dim=-1)
    probs = torch.softmax(sorted_logits, dim=-1)
    cum = probs.cumsum(-1)
    remove = cum - probs > top_p  # keep the smallest set whose mass reaches top_p
    sorted_logits = sorted_logits.masked_fill(remove, float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter(-1, idx, sorted_logits)


class _StopChecker:
    """Finds stop strings cheaply: decode a short tail only when the new token could end one."""

    def __init__(self, tokenizer: Any, stop_strings: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.stop_strings = tuple(stop_strings)
        last_chars = {s[-1] for s in self.stop_strings if s}
        vocab_size = len(tokenizer)
        candidates = []
        for i in range(vocab_size):
            text = tokenizer.decode([i])
            if any(c in text for c in last_chars):
                candidates.append(i)
        self.candidates = set(candidates)
        self.tail = max((len(s) for s in self.stop_strings), default=1) + 2

    def hit(self, ids: list[int]) -> bool:
        if not self.stop_strings or ids[-1] not in self.candidates:
            return False
        text = self.tokenizer.decode(ids[-self.tail:])
        return any(s in text for s in self.stop_strings)


_STOP_CACHE: dict[tuple[int, tuple[str, ...]], _StopChecker] = {}


def _stop_checker(tokenizer: Any, stop_strings: Sequence[str]) -> _StopChecker:
    key = (id(tokenizer), tuple(stop_strings))
    if key not in _STOP_CACHE:
        _STOP_CACHE[key] = _StopChecker(tokenizer, stop_strings)
    return _STOP_CACHE[key]


@torch.no_grad()
def sample_turns(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    repetition_penalty: float = 1.0,
    stop_strings: Sequence[str] = DEFAULT_STOP_STRINGS,
    eos_token_ids: Sequence[int] | None = None,
    generator: torch.Generator | None = None,
    caches: Sequence[KVCache | None] | None = None,
    keep_cache: bool = False,
    stats: dict[str, float] | None = None,
) -> list[SampledTurn]:
    """Sample one turn for each prompt (token ids), batched, with a KV cache.

    ``caches[i]`` (optional) is the KV cache of ``prompts[i][:L]`` from an earlier turn: only the tokens after it
    are prefilled. With ``keep_cache`` each :class:`SampledTurn` carries its row's cache for the next turn.
    ``stats`` (if given) receives ``prefill_tokens`` (tokens run through the model before the first sample) and
    ``prefill_s`` (the time that took).

    Returns the sampled ids (up to and including the stop token) and each token's log-prob
    under the temperature-scaled distribution ``log_softmax(logits / temperature)``, which is
    what the update recomputes. ``temperature=0`` decodes greedily (log-probs at temperature 1).
    ``repetition_penalty`` (HF's rule: a seen token's logit is divided by it when positive, multiplied
    when negative) shapes the distribution that is sampled and whose log-probs are returned.

    Sampling happens on the model's device: ``generator`` (a CPU generator) seeds a generator there once,
    and only the B sampled ids and their log-probs cross to the host each step, never the distribution.
    """
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0 (1.0: none), got {repetition_penalty}.")
    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = set(eos_token_ids if eos_token_ids is not None else
              ([tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []))
    checker = _stop_checker(tokenizer, stop_strings)
    B = len(prompts)
    caches = list(caches) if caches is not None else [None] * B
    # Each row: cached positions (reused), then new tokens; both right-aligned in their region (left padding).
    cached = [min(cache_length(c), len(p) - 1) for c, p in zip(caches, prompts)]
    caches = [crop_cache(c, n) for c, n in zip(caches, cached)]
    news = [list(p)[n:] for p, n in zip(prompts, cached)]
    C = max(cached)
    L = max(len(x) for x in news)
    input_ids = torch.full((B, L), pad_id, dtype=torch.long)
    attn = torch.zeros((B, C + L), dtype=torch.long)
    position_ids = torch.zeros((B, L), dtype=torch.long)
    for i, (x, n) in enumerate(zip(news, cached)):
        input_ids[i, L - len(x):] = torch.as_tensor(x, dtype=torch.long)
        attn[i, C - n:C] = 1
        attn[i, C + L - len(x):] = 1
        position_ids[i, L - len(x):] = torch.arange(n, n + len(x))
    input_ids, attn, position_ids = input_ids.to(device), attn.to(device), position_ids.to(device)
    if stats is not None:
        stats["prefill_tokens"] = stats.get("prefill_tokens", 0.0) + float(sum(len(x) for x in news))

    dev_gen = None
    if temperature > 0 and generator is not None:
        seed = int(torch.randint(0, 2**62, (1,), generator=generator).item())
        dev_gen = torch.Generator(device=device).manual_seed(seed)

    was_training = model.training
    model.eval()
    cache_kw = _cache_kwarg(model)
    extra = {cache_kw: _batch_cache(caches, C, device)} if C > 0 else {}
    t_prefill = time.perf_counter()
    out = model(input_ids=input_ids, attention_mask=attn, position_ids=position_ids,
                use_cache=True, logits_to_keep=1, **extra)
    past = _out_cache(out)
    logits = out.logits[:, -1].float()
    if stats is not None:
        stats["prefill_s"] = stats.get("prefill_s", 0.0) + time.perf_counter() - t_prefill
    next_pos = position_ids[:, -1] + 1
    seen = None
    if repetition_penalty != 1.0:  # (B, V) tokens already in each sequence
        seen = torch.zeros(B, logits.shape[-1], dtype=torch.bool, device=device)
        for i, p in enumerate(prompts):
            seen[i, torch.as_tensor(list(p), device=device).clamp(max=logits.shape[-1] - 1)] = True
    seqs: list[list[int]] = [[] for _ in range(B)]
    logps: list[list[float]] = [[] for _ in range(B)]
    stops = ["length"] * B
    finished = torch.zeros(B, dtype=torch.bool)
    for step in range(max_new_tokens):
        if seen is not None:
            logits = torch.where(seen, torch.where(logits > 0, logits / repetition_penalty,
                                                   logits * repetition_penalty), logits)
        if temperature > 0:
            logp_all = torch.log_softmax(logits / temperature, dim=-1)  # (B, V)
            sample_logits = logp_all if top_p >= 1.0 else _top_p_filter(logp_all, top_p)
            probs = torch.softmax(sample_logits, dim=-1)
            tok = torch.multinomial(probs, 1, generator=dev_gen).squeeze(-1)  # (B,) on the device
        else:
            logp_all = torch.log_softmax(logits, dim=-1)
            tok = logp_all.argmax(-1)
        tok_lp = logp_all.gather(-1, tok[:, None]).squeeze(-1)  # (B,)
        if seen is not None:
            seen[torch.arange(B, device=device), tok] = True
        tok_list, lp_list = tok.tolist(), tok_lp.tolist()  # the one host transfer per step: 2 x B numbers
        tok = tok.cpu()
        for i in range(B):
            if finished[i]:
                continue
            seqs[i].append(tok_list[i])
            logps[i].append(lp_list[i])
            if tok_list[i] in eos:
                finished[i], stops[i] = True, "eos"
            elif checker.hit(seqs[i]):
                finished[i], stops[i] = True, "string"
        if bool(finished.all()) or step == max_new_tokens - 1:
            break  # nothing left to sample: the last token is not fed back (no forward pass wasted on it)
        step_tok = tok.masked_fill(finished, pad_id).to(device)[:, None]
        attn = torch.cat([attn, torch.ones((B, 1), dtype=attn.dtype, device=device)], dim=1)
        out = model(input_ids=step_tok, attention_mask=attn, position_ids=next_pos[:, None],
                    use_cache=True, **{cache_kw: past})
        past = _out_cache(out)
        logits = out.logits[:, -1].float()
        next_pos = next_pos + 1
    if was_training:
        model.train()
    kept: list[KVCache | None] = [None] * B
    if keep_cache and _reusable(past):
        width = C + L  # the prefill's columns; decode step j wrote column width + j
        for i in range(B):
            fed = max(len(seqs[i]) - 1, 0)  # a row's last token is never fed back
            cols = torch.cat([torch.arange(C - cached[i], C), torch.arange(width - len(news[i]), width),
                              torch.arange(width, width + fed)]).to(device)
            kept[i] = tuple((layer.keys[i:i + 1].index_select(2, cols), layer.values[i:i + 1].index_select(2, cols))
                            for layer in past.layers)
    return [SampledTurn(s, lp, st, c) for s, lp, st, c in zip(seqs, logps, stops, kept)]


# ----------------------------------------------------------------------------- episodes


@dataclass
class RolloutConfig(DecodingSettings):
    """How the agent plays its turns: the agent-decoding settings group as every command declares it
    (:class:`~promptr1.core.settings.DecodingSettings`: ``max_new_tokens``, ``max_seq_len``, ``temperature``,
    ``top_p``, ``repetition_penalty``, ``kv_reuse``, ``rollout_max_batch_tokens``: one default and one check each,
    there), and what only the engine needs: where a turn stops and how episodes wait for each other."""

    stop_strings: tuple[str, ...] = DEFAULT_STOP_STRINGS
    #: Where a turn ends (kept): the framing's (:func:`stop_strings_for`).
    #: Episodes advance independently: an episode whose env-LLM reply has landed joins the next
    #: generation batch without waiting for slower calls of other episodes. False = a barrier per
    #: turn (every generation round waits for all env calls), which keeps batch composition, and so
    #: seeded sampling, independent of timing: the trainer uses it in deterministic mode.
    independent: bool = True
    #: With ``independent``: how long to let more replies land before generating for those ready
    #: (larger batches for fast env LLMs; a slow call never holds the others back longer than this).
    batch_wait_s: float = 0.05


class EpisodeFeed:
    """Episodes that join an :func:`arun_episodes` loop while it plays (a server's requests).

    :meth:`put` hands in an ``(env, task)`` pair and returns a future that the loop resolves with the finished
    :class:`Episode` (or the error that stopped it); the episode joins the next generation batch with every other
    episode waiting for a turn, whichever request it came from. Cancelling the future drops the episode at its next
    turn. :meth:`close` ends the loop once the episodes in play are finished. Create and use it inside the loop
    that runs :func:`arun_episodes`.
    """

    def __init__(self) -> None:
        self._items: list[tuple[Any, Any, asyncio.Future]] = []
        self._arrived = asyncio.Event()
        self.closed = False

    def put(self, env: Any, task: Any) -> asyncio.Future:
        """Add an episode of ``task`` played in ``env`` (reset by the loop); returns its future."""
        if self.closed:
            raise RuntimeError("this EpisodeFeed is closed: no episode can join it any more.")
        fut = asyncio.get_running_loop().create_future()
        self._items.append((env, task, fut))
        self._arrived.set()
        return fut

    def close(self) -> None:
        """No more episodes: the loop returns once those in play are finished."""
        self.closed = True
        self._arrived.set()

    def take(self) -> list[tuple[Any, Any, asyncio.Future]]:
        items, self._items = self._items, []
        if not self.closed:
            self._arrived.clear()
        return items

    @property
    def finished(self) -> bool:
        return self.closed and not self._items

    async def wait(self) -> None:
        """Until an episode arrives or the feed is closed."""
        await self._arrived.wait()


def run_episodes(
    model: Any,
    tokenizer: Any,
    envs: Sequence[Any],
    tasks: Sequence[Any],
    groups: Sequence[int],
    cfg: RolloutConfig,
    *,
    framer: ChatFramer | None = None,
    generator: torch.Generator | None = None,
    timings: dict[str, float] | None = None,
    seed: int | None = None,
    sampler: Callable[..., list[SampledTurn]] | None = None,
    on_episode_end: Callable[[int, int], None] | None = None,
) -> list[Episode]:
    """Play one episode per ``(env, task)`` pair to the end; return them as token sequences.

    ``envs[i]`` is reset with ``options={"task": tasks[i]}``. ``timings`` (if given) receives
    ``generate_s`` and ``env_s``: wall time spent sampling and waiting for the environment.
    ``on_episode_end(finished, total)`` is called each time an episode ends (for a progress display).
    """
    return asyncio.run(arun_episodes(model, tokenizer, envs, tasks, groups, cfg, framer=framer,
                                     generator=generator, timings=timings, seed=seed, sampler=sampler,
                                     on_episode_end=on_episode_end))


def end_token_ids(tokenizer: Any, model: Any = None) -> list[int]:
    """The tokens that end an agent turn: the tokenizer's ``eos_token_id`` and every end token the model's
    generation config lists (Qwen3: ``<|im_end|>`` and ``<|endoftext|>``), as vLLM stops in the reference's rollout.
    Without a model, the generation config is read from the tokenizer's folder when it has one.

    >>> class Tok: eos_token_id, name_or_path = 2, ""
    >>> class Model: generation_config = type("G", (), {"eos_token_id": [7, 2]})()
    >>> end_token_ids(Tok(), Model())
    [2, 7]
    """
    ids = [tokenizer.eos_token_id] if getattr(tokenizer, "eos_token_id", None) is not None else []
    config = getattr(model, "generation_config", None) if model is not None else None
    if config is None and model is None:
        folder = str(getattr(tokenizer, "name_or_path", "") or "")
        if folder and os.path.isfile(os.path.join(folder, "generation_config.json")):
            try:
                from transformers import GenerationConfig

                config = GenerationConfig.from_pretrained(folder, local_files_only=True)
            except (OSError, ValueError):
                config = None
    listed = getattr(config, "eos_token_id", None) if config is not None else None
    if isinstance(listed, int):
        listed = [listed]
    for tok in listed or []:
        if tok is not None and int(tok) not in ids:
            ids.append(int(tok))
    return ids


def stop_strings_for(framing: str) -> tuple[str, ...]:
    """Where an agent turn ends under ``framing`` (besides the end-of-turn token): the one source every player
    (our rollout, the TRL rollout, the verl loop) takes its stop strings from.

    >>> stop_strings_for("ours"), stop_strings_for("reference")
    (('</interaction_prompt>', '</answer>'), ())
    """
    from promptr1.envs.framing import FRAMINGS

    return tuple(FRAMINGS.get(framing).stop_strings)


def rollout_config(settings: Any, **overrides: Any) -> RolloutConfig:
    """The :class:`RolloutConfig` of a command's settings: their agent-decoding group as it is, and the stop strings
    of their framing (the reference framing stops only at the end-of-turn token)."""
    return RolloutConfig.pick(settings, **{"stop_strings": stop_strings_for(settings.framing), **overrides})


async def arun_episodes(
    model: Any,
    tokenizer: Any,
    envs: Sequence[Any],
    tasks: Sequence[Any],
    groups: Sequence[int],
    cfg: RolloutConfig,
    *,
    framer: ChatFramer | None = None,
    generator: torch.Generator | None = None,
    timings: dict[str, float] | None = None,
    seed: int | None = None,
    sampler: Callable[..., list[SampledTurn]] | None = None,
    on_episode_end: Callable[[int, int], None] | None = None,
    feed: EpisodeFeed | None = None,
    listener: Callable[[str, Episode, str], None] | None = None,
    offload: bool = False,
    share_system_prefix: bool = False,
) -> list[Episode]:
    """Async form of :func:`run_episodes` (for callers that already run an event loop).

    ``sampler`` replaces :func:`sample_turns` (same signature and result), e.g. to generate with a vLLM
    engine (:mod:`promptr1.integrations.trl`).

    ``feed`` (an :class:`EpisodeFeed`) keeps the loop open for episodes that arrive while it plays (a server's
    requests): they join the same generation batches as the others, each resolved through its own future and
    dropped from the loop once finished; the loop returns (the episodes of ``envs``/``tasks`` only) when the feed
    is closed and every episode is finished. ``listener(event, episode, text)`` hears each ``"turn"`` (the agent's
    turn ``text``, before the env call) and each ``"step"`` (the env's reply recorded, or the episode ended).
    ``offload`` samples in a worker thread, so the event loop keeps serving (and env calls keep landing) while the
    agent generates. ``share_system_prefix`` (with ``kv_reuse`` and our sampler): the KV cache of the tokens of the
    chat's system message, which every episode of a server shares, is computed once, and each fed episode whose
    prompt starts with them prefills only the rest. ``timings`` also counts ``generate_batches`` and
    ``generate_episodes`` (episodes summed over batches).
    """
    if not (len(envs) == len(tasks) == len(groups)):
        raise ValueError(f"envs, tasks and groups must have equal lengths, got {len(envs)}, {len(tasks)}, {len(groups)}.")
    framer = framer or ChatFramer(tokenizer)
    timings = timings if timings is not None else {}
    for key in ("generate_s", "env_s", "generate_batches", "generate_episodes"):
        timings.setdefault(key, 0.0)
    eos_ids = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []  # the template's end of turn
    end_ids = end_token_ids(tokenizer, model)  # where a turn stops: every end token of the model
    episodes: dict[int, Episode] = {
        i: start_episode(env, task, group=g, seed=None if seed is None else seed + i, framer=framer,
                         max_seq_len=cfg.max_seq_len)
        for i, (env, task, g) in enumerate(zip(envs, tasks, groups))}
    env_of: dict[int, Any] = dict(enumerate(envs))
    futures: dict[int, asyncio.Future] = {}  # episodes that came through the feed
    given = len(episodes)
    next_k = given

    ready = list(range(len(episodes)))  # episodes waiting for their next agent turn
    pending: set[asyncio.Task] = set()  # env steps in flight

    shared: list[Any] = []  # [(prefix ids, its KV cache)] once computed
    answered = 0  # fed episodes that left since the last generation round

    def system_prefix(ep: Episode) -> None:
        """Start ``ep`` from the shared KV cache of its system message's tokens (computed on first use)."""
        if not shared:
            shared.append(None)
            if ep.messages and ep.messages[0].get("role") == "system":
                ids = framer.encode(framer.render(ep.messages[:1], False))
                if 0 < len(ids) < len(ep.ids) and ep.ids[:len(ids)] == ids:
                    s = sample_turns(model, tokenizer, [ids], max_new_tokens=1, temperature=0.0, stop_strings=(),
                                     keep_cache=True)[0]
                    cache = crop_cache(s.cache, len(ids))
                    if cache_length(cache) == len(ids):
                        shared[0] = (ids, cache)
        if shared[0] is not None and ep.ids[:len(shared[0][0])] == shared[0][0]:
            ep.cache = shared[0][1]  # read only: a turn's cache is built anew from it

    def admit() -> None:
        nonlocal next_k
        for env, task, fut in feed.take():  # type: ignore[union-attr]
            if fut.done():  # cancelled before it started
                continue
            try:
                ep = start_episode(env, task, group=next_k, framer=framer, max_seq_len=cfg.max_seq_len)
                if share_system_prefix and cfg.kv_reuse and sampler is None:
                    system_prefix(ep)
            except Exception as exc:  # noqa: BLE001 - this episode's error, for its caller
                fut.set_exception(exc)
                continue
            episodes[next_k], env_of[next_k], futures[next_k] = ep, env, fut
            ready.append(next_k)
            next_k += 1

    def leave(k: int, error: BaseException | None = None) -> None:
        """A fed episode leaves the loop: finished, failed (``error``) or cancelled by its caller."""
        nonlocal answered
        ep, fut = episodes.pop(k), futures.pop(k)
        env_of.pop(k)
        ep.cache = None
        answered += 1
        if not fut.done():
            fut.set_exception(error) if error is not None else fut.set_result(ep)

    def dropped(k: int) -> bool:
        if k in futures and futures[k].done():
            leave(k)
            return True
        return False

    def apply(k: int, s: Any, text: str, result: tuple) -> None:
        """Record env step ``result`` of episode ``k``; leaves it done or waiting for its next turn."""
        ep = episodes[k]
        record_step(ep, text, result, framer=framer, ended_with_eos=bool(s.ids) and s.ids[-1] in eos_ids,
                    max_seq_len=cfg.max_seq_len, max_new_tokens=cfg.max_new_tokens)
        if ep.overflow and not ep.episode_stats:
            # ended here, not by the env (no room for another turn): the env's summary was never sent, but the
            # calls were made; without this the step's env_llm/calls missed them (the budget counted them)
            ep.episode_stats = dict(getattr(env_of[k], "episode_stats", None) or {})
        if listener is not None:
            listener("step", episodes[k], "")

    async def env_call(k: int, s: Any, text: str) -> tuple[int, Any, str, Any]:
        try:
            return k, s, text, await env_step(env_of[k], text)
        except Exception as exc:  # a fed episode fails alone; the others play on
            if k not in futures:
                raise
            return k, s, text, exc

    while ready or pending or (feed is not None and not feed.finished):
        if feed is not None:
            admit()
            if not ready and not pending:
                if not feed.finished:
                    await feed.wait()
                continue
        if pending and (not ready or cfg.independent):
            # Without a barrier, wait briefly for more replies; with one, wait for all of them.
            t0 = time.perf_counter()
            if not cfg.independent:
                done, pending = await asyncio.wait(pending)
            else:
                timeout = None if not ready else cfg.batch_wait_s
                # an open loop with nothing to generate also wakes up for a new episode
                arrival = (asyncio.ensure_future(feed.wait()) if feed is not None and not ready and not feed.closed
                           else None)
                waiting = pending | {arrival} if arrival is not None else pending
                done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
                if arrival is not None:
                    arrival.cancel()
                    done.discard(arrival)
                pending = pending - done
                if ready or done:  # let replies that land within the window join this batch
                    more, pending = (await asyncio.wait(pending, timeout=cfg.batch_wait_s)) if pending else (set(), set())
                    done |= more
            timings["env_s"] += time.perf_counter() - t0
            for task in sorted(done, key=lambda t: t.result()[0]):  # stable order: episode index
                k, s, text, result = task.result()
                if k in futures and futures[k].done():
                    leave(k)
                    continue
                if isinstance(result, BaseException):
                    leave(k, result)
                    continue
                apply(k, s, text, result)
                if not episodes[k].done:
                    ready.append(k)
                elif k in futures:
                    leave(k)
                elif on_episode_end is not None:
                    on_episode_end(sum(e.done for e in episodes.values()), len(episodes))
        if feed is not None:
            if answered and cfg.independent and cfg.batch_wait_s > 0 and not feed.closed:
                # episodes just finished: their callers may send the next ones at once; let those join this round
                # rather than the next (steady callers would otherwise split into two alternating half batches)
                await asyncio.sleep(cfg.batch_wait_s)
            answered = 0
            admit()
        active, ready = [k for k in sorted(ready) if not dropped(k)], []
        for chunk in _token_batches(active, [len(episodes[k].ids) for k in active], cfg):
            t0 = time.perf_counter()
            budget = [min(cfg.max_new_tokens, cfg.max_seq_len - len(episodes[k].ids)) for k in chunk]
            kw: dict[str, Any] = {}
            if cfg.kv_reuse and sampler is None:
                kw = {"caches": [episodes[k].cache for k in chunk], "keep_cache": True, "stats": timings}
            elif sampler is None:
                kw = {"stats": timings}
            args = (model, tokenizer, [episodes[k].ids for k in chunk])
            kw.update(max_new_tokens=max(budget), temperature=cfg.temperature, top_p=cfg.top_p,
                      repetition_penalty=cfg.repetition_penalty, stop_strings=cfg.stop_strings,
                      eos_token_ids=end_ids, generator=generator)
            try:
                if offload:
                    sampled = await asyncio.to_thread(sampler or sample_turns, *args, **kw)
                else:
                    sampled = (sampler or sample_turns)(*args, **kw)
            except Exception as exc:  # with a feed, the batch's episodes fail, the loop serves on
                if feed is None:
                    raise
                for k in chunk:
                    leave(k, exc)
                continue
            timings["generate_s"] += time.perf_counter() - t0
            timings["generate_batches"] += 1
            timings["generate_episodes"] += len(chunk)
            for k, s, b in zip(chunk, sampled, budget):
                ids, lps = s.ids[:b], s.logps[:b]  # a shorter budget than the batch's: cut
                ep = episodes[k]
                before = len(ep.ids)
                ep.add(ids, True, lps)
                ep.gen_tokens += len(ids)
                # The cache covers the prompt and the generated tokens fed back, never more than ep.ids.
                fed = min(max(len(s.ids) - 1, 0), len(ids))
                ep.cache = crop_cache(getattr(s, "cache", None), before + fed)
                if ep.cache is not None and cfg.rollout_max_batch_tokens > 0 and ep.cache[0][0].device.type != "cpu":
                    ep.cache = move_cache(ep.cache, "cpu")  # off the accelerator until its next turn
                s.cache = None
                s.ids, s.logps = ids, lps
                text = ep.prefill + tokenizer.decode(ids, skip_special_tokens=True)
                if listener is not None:
                    listener("turn", ep, text)
                pending.add(asyncio.ensure_future(env_call(k, s, text)))
    return [episodes[i] for i in range(given)]


def _token_batches(active: list[int], lengths: list[int], cfg: RolloutConfig) -> list[list[int]]:
    """Split the episodes waiting for a turn into generation batches of at most ``cfg.rollout_max_batch_tokens``
    (tokens so far + ``max_new_tokens`` each; an episode alone over the cap still gets a batch of its own).

    >>> _token_batches([0, 1, 2], [100, 100, 100], RolloutConfig(max_new_tokens=50, rollout_max_batch_tokens=300))
    [[0, 1], [2]]
    >>> _token_batches([0, 1], [10, 10], RolloutConfig(rollout_max_batch_tokens=0))
    [[0, 1]]
    """
    if cfg.rollout_max_batch_tokens <= 0:
        return [active] if active else []
    out: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for k, n in zip(active, lengths):
        need = n + cfg.max_new_tokens
        if cur and used + need > cfg.rollout_max_batch_tokens:
            out.append(cur)
            cur, used = [], 0
        cur.append(k)
        used += need
    if cur:
        out.append(cur)
    return out


def collate_episodes(episodes: Sequence[Episode], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad episodes into ``(B, T)`` tensors: input_ids, attention_mask, action_mask, old_logp.

    ``action_mask[b, t] = 1`` when token ``t`` was sampled by the agent; ``old_logp[b, t]`` is
    its log-prob given tokens ``< t`` (the first token is never an action).
    """
    from promptr1.agents.masks import build_action_mask, pad_sequences

    input_ids, action, attention = build_action_mask([e.segments for e in episodes], pad_id=pad_id)  # (B, T)
    old = pad_sequences([e.logp for e in episodes], pad_to=input_ids.shape[1], dtype=torch.float32)  # (B, T)
    return {"input_ids": input_ids, "attention_mask": attention, "action_mask": action.float(), "old_logp": old}
