"""A tiny random Qwen2-style causal LM with an offline-trained tokenizer, for tests and smoke runs.

:func:`build_tiny_model` writes a complete Hugging Face model folder (``config.json``,
weights, ``tokenizer.json``, ``tokenizer_config.json`` with a ChatML chat template,
``generation_config.json``) that ``AutoTokenizer.from_pretrained`` and
``AutoModelForCausalLM.from_pretrained`` load like any hub checkpoint. Nothing is downloaded:
the byte-level BPE tokenizer is trained with the ``tokenizers`` library on a corpus this module
generates (English-like filler, numbers, JSON tool calls and the Prompt-R1 turn tags), and the
weights are random, drawn from ``seed``.

The model knows nothing, but it has the right *shape*: a chat template, ChatML special
tokens, pad and eos ids, left/right padding, ``generate`` and gradients all behave as with a
real Qwen2 checkpoint, a few hundred times faster. :func:`tiny_model_path` builds it once into
a cache folder and returns that folder.

Cache location (:func:`promptr1.llm_backends.model_cache.default_cache_dir`, shared with SmolLM2): ``$PROMPTR1_CACHE`` if set,
else ``$XDG_CACHE_HOME/promptr1``, else ``~/.cache/promptr1``.
"""

from __future__ import annotations

import json
import os
import pathlib
import random
from collections.abc import Iterator

from promptr1.llm_backends.model_cache import atomic_build_dir, default_cache_dir

__all__ = [
    "CHATML_TEMPLATE",
    "PROTOCOL_TAGS",
    "SPECIAL_TOKENS",
    "TINY_MODEL_VERSION",
    "build_tiny_model",
    "tiny_model_path",
]

#: Bump when the recipe changes so that stale cached copies are rebuilt.
TINY_MODEL_VERSION = 2

#: The Prompt-R1 turn-protocol tags (docs/architecture.md, the turn protocol); they appear often in the corpus so
#: that the tokenizer spends few tokens on them.
PROTOCOL_TAGS: tuple[str, ...] = (
    "<think>",
    "</think>",
    "<interaction_prompt>",
    "</interaction_prompt>",
    "<interaction_response>",
    "</interaction_response>",
    "<answer>",
    "</answer>",
)

#: ChatML special tokens; ``BpeTrainer`` gives them the first ids (0, 1, 2) in this order.
#: ``<|endoftext|>`` is the pad token, ``<|im_end|>`` ends a turn (the eos token).
SPECIAL_TOKENS: tuple[str, ...] = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")

#: ChatML as Qwen2 and SmolLM2 write it, without an implicit default system prompt, so that
#: rendering a conversation prefix gives a string prefix of rendering the whole conversation.
CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- endif %}"
)

# --------------------------------------------------------------------------- corpus

_WORDS = (  # noqa: SIM905 - easier to read and edit as prose
    "the a an of to and in is was for on with as by at from that this it be are or which who "
    "what when where how why many much first last year city river country capital president "
    "author film song book born died team game player number answer question prompt think step "
    "large small model language expert reply compute sum total each more less than between "
    "after before people state world war university company name called known located "
    "population history director album released season league record water light energy system "
    "data time day paris france london berlin river nile einstein newton shakespeare music "
    "science math"
).split()

_QUESTION_STARTS = (
    "Who",
    "What",
    "When",
    "Where",
    "Which",
    "How many",
    "How much",
    "Why",
    "In which year",
    "Is",
)


_SYLLABLES = (  # noqa: SIM905 - easier to read and edit as prose
    "ba be bi bo bu ka ke ki ko ku la le li lo lu ma me mi mo mu na ne ni no nu ra re ri ro ru "
    "sa se si so su ta te ti to tu va ve vi vo an en in on er ar or st th ch sh ng"
).split()


def _lexicon(rng: random.Random, n: int = 3000) -> list[str]:
    """Common English words first, then pseudo-words, so that later words are rarer (Zipf-like)."""
    words = list(_WORDS)
    while len(words) < n:
        w = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(1, 4)))
        words.append(w.capitalize() if rng.random() < 0.2 else w)
    return words


def _pick(rng: random.Random, lexicon: list[str]) -> str:
    # Index drawn from a heavy-tailed distribution: the first words are by far the most common.
    return lexicon[min(int(rng.paretovariate(0.35)) - 1, len(lexicon) - 1)]


def _sentence(rng: random.Random, lo: int = 4, hi: int = 14) -> str:
    lexicon = getattr(rng, "lexicon", None) or list(_WORDS)
    words = [_pick(rng, lexicon) for _ in range(rng.randint(lo, hi))]
    if rng.random() < 0.3:
        words.insert(rng.randrange(len(words) + 1), str(rng.randint(0, 2025)))
    s = " ".join(words)
    return s[0].upper() + s[1:] + rng.choice((".", ".", "?", "!", ","))


def _corpus(seed: int, n_docs: int = 6000) -> Iterator[str]:
    """Yield short documents: prose, questions, chat turns in the Prompt-R1 protocol, JSON."""
    rng = random.Random(seed)
    rng.lexicon = _lexicon(rng)  # type: ignore[attr-defined]
    for i in range(n_docs):
        kind = i % 5
        if kind == 0:
            yield " ".join(_sentence(rng) for _ in range(rng.randint(1, 4)))
        elif kind == 1:
            q = f"{rng.choice(_QUESTION_STARTS)} {_sentence(rng, 3, 9)[:-1].lower()}?"
            yield f"Question: {q}\nAnswer the question step by step. Put the final answer in <answer> </answer>."
        elif kind == 2:
            prompt = _sentence(rng)
            call = json.dumps({"name": "prompt", "arguments": {"prompt": prompt}})
            inner = call if rng.random() < 0.5 else prompt
            yield (f"<think>{_sentence(rng)}</think>\n<interaction_prompt>{inner}</interaction_prompt>")
        elif kind == 3:
            yield (
                f"<interaction_response>{_sentence(rng)} {_sentence(rng)}</interaction_response>\n"
                f"<think>{_sentence(rng)}</think>\n<answer>{rng.choice(_WORDS)} {rng.randint(0, 999)}</answer>"
            )
        else:
            a, b = rng.randint(0, 999), rng.randint(0, 999)
            yield f"{a} + {b} = {a + b}. {a} * {b} = {a * b}. The total is {a - b}: {_sentence(rng)}"
    # The tags on their own, many times, so each becomes a single token or two.
    for _ in range(50):
        yield " ".join(PROTOCOL_TAGS)


# --------------------------------------------------------------------------- build


# Pre-tokenization split used by Qwen2-family tokenizers: English contractions, letter runs
# (with one leading non-letter), single digits, punctuation runs, newlines, other whitespace.
_PRETOKENIZE_PATTERN = "|".join(  # noqa: FLY002 - one alternative per line
    [
        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)",
        r"[^\r\n\p{L}\p{N}]?\p{L}+",
        r"\p{N}",
        r" ?[^\s\p{L}\p{N}]+[\r\n]*",
        r"\s*[\r\n]+",
        r"\s+(?!\S)",
        r"\s+",
    ]
)


def _train_tokenizer(seed: int, vocab_size: int):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    # The same normalizer and pre-tokenizer as Qwen2's tokenizer, which transformers rebuilds
    # for any folder whose config says model_type "qwen2": both load paths then agree.
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=2,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(list(_corpus(seed)), trainer=trainer)
    return tok


def _chat_tokenizer(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        additional_special_tokens=["<|im_start|>"],
        chat_template=CHATML_TEMPLATE,
        model_max_length=4096,
        clean_up_tokenization_spaces=False,
    )


def build_tiny_model(
    path: str | os.PathLike,
    *,
    seed: int = 0,
    vocab_size: int = 4096,
    hidden_size: int = 256,
    num_hidden_layers: int = 2,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    intermediate_size: int = 512,
    max_position_embeddings: int = 4096,
    overwrite: bool = False,
) -> pathlib.Path:
    """Write a tiny random Qwen2 causal LM and its ChatML tokenizer to ``path``; return the path.

    The defaults give about 3.2M parameters (untied input and output embeddings dominate),
    which generates thousands of tokens per second on a laptop CPU. Two builds with the same
    arguments give identical files. Takes a couple of seconds.

    Raises ``FileExistsError`` if ``path`` exists and is not empty, unless ``overwrite=True``.
    """
    import torch
    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    out = pathlib.Path(path)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(
            f"build_tiny_model: {str(out)!r} exists and is not empty. "
            "Pass overwrite=True to replace it, or use tiny_model_path() for a cached copy."
        )
    if vocab_size < 300:
        raise ValueError(
            f"build_tiny_model: vocab_size must be at least 300 (256 bytes + special tokens + a few "
            f"merges); got {vocab_size}."
        )
    out.mkdir(parents=True, exist_ok=True)

    tokenizer = _chat_tokenizer(_train_tokenizer(seed, vocab_size))
    eos_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")

    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=num_hidden_layers,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
        bos_token_id=pad_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        use_cache=True,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen2ForCausalLM(config)
    model.generation_config = GenerationConfig(
        bos_token_id=pad_id,
        eos_token_id=[eos_id, pad_id],
        pad_token_id=pad_id,
        do_sample=False,
    )
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def tiny_model_path(cache_dir: str | os.PathLike | None = None, *, seed: int = 0) -> pathlib.Path:
    """Return a cached tiny model folder, building it on first use.

    The folder is ``<cache_dir>/tiny-qwen2`` (seed 0) or ``<cache_dir>/tiny-qwen2-seed<N>``,
    with ``cache_dir`` defaulting to :func:`default_cache_dir`. Safe when several processes
    call it at once.
    """
    root = pathlib.Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    name = "tiny-qwen2" if seed == 0 else f"tiny-qwen2-seed{seed}"
    marker = {"kind": "tiny-qwen2", "version": TINY_MODEL_VERSION, "seed": seed}
    return atomic_build_dir(
        root / name, lambda tmp: build_tiny_model(tmp, seed=seed, overwrite=True), marker=marker
    )
