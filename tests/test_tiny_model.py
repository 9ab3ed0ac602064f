"""The tiny random Qwen2 model: loads with Auto* classes, generates, has a usable ChatML template."""

from __future__ import annotations

import hashlib
import json
import threading

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from promptr1.testing.tiny_model import (
    PROTOCOL_TAGS,
    atomic_build_dir,
    build_tiny_model,
    default_cache_dir,
    tiny_model_path,
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def tok(tiny):
    return transformers.AutoTokenizer.from_pretrained(tiny)


@pytest.fixture(scope="module")
def model(tiny):
    return transformers.AutoModelForCausalLM.from_pretrained(tiny)


def test_loads_as_qwen2_with_param_count_in_range(model):
    assert model.config.model_type == "qwen2"
    n = sum(p.numel() for p in model.parameters())
    assert 2_500_000 <= n <= 4_500_000, n


def test_special_tokens(tok, model):
    assert tok.eos_token == "<|im_end|>"
    assert tok.pad_token == "<|endoftext|>"
    for t in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):
        ids = tok(t, add_special_tokens=False).input_ids
        assert len(ids) == 1, (t, ids)
    assert model.config.eos_token_id == tok.eos_token_id
    assert tok.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id


def test_text_round_trips_through_tokenizer(tok):
    text = "Question: Who wrote Hamlet in 1601?\n<think>ok</think><answer>Shakespeare</answer> café"
    ids = tok(text, add_special_tokens=False).input_ids
    assert tok.decode(ids) == text


def test_protocol_tags_are_cheap(tok):
    # Trained on a corpus full of the tags: each costs at most 4 tokens (a bare byte-level
    # tokenizer needs one token per character, 7 to 23).
    for tag in PROTOCOL_TAGS:
        assert len(tok(tag, add_special_tokens=False).input_ids) <= 4, tag


def test_raw_and_auto_tokenizers_agree(tiny, tok):
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(tiny / "tokenizer.json"))
    fast = transformers.PreTrainedTokenizerFast.from_pretrained(tiny)
    for s in ("Hello   world!! 12345", "<think>x</think>\n\n  Paris's", "a 😀 b\r\nc"):
        expected = raw.encode(s).ids
        assert tok(s, add_special_tokens=False).input_ids == expected
        assert fast(s, add_special_tokens=False).input_ids == expected


def test_chat_template_renders_chatml(tok):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi?"}]
    text = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    )
    no_gen = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=False)
    assert no_gen + "<|im_start|>assistant\n" == text


def test_chat_template_prefix_property(tok):
    conv = [
        {"role": "system", "content": "You are the agent."},
        {"role": "user", "content": "Question: 2+2?"},
        {"role": "assistant", "content": "<think>ask</think><interaction_prompt>2+2?</interaction_prompt>"},
        {"role": "user", "content": "<interaction_response>4</interaction_response>"},
        {"role": "assistant", "content": "<think>done</think><answer>4</answer>"},
    ]
    full = tok.apply_chat_template(conv, tokenize=False)
    for k in range(1, len(conv)):
        prefix = tok.apply_chat_template(conv[:k], tokenize=False)
        assert full.startswith(prefix), k
        # Token level too: the prefix's ids are a prefix of the whole conversation's ids.
        assert tok(full).input_ids[: len(tok(prefix).input_ids)] == tok(prefix).input_ids


def test_generates_greedy_and_left_padded_batch(tok, model):
    tok.padding_side = "left"
    prompts = [
        tok.apply_chat_template([{"role": "user", "content": c}], tokenize=False, add_generation_prompt=True)
        for c in ("short", "a much longer question with many words in it")
    ]
    batch = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    out = model.generate(**batch, max_new_tokens=6, do_sample=False)
    assert out.shape[0] == 2 and batch.input_ids.shape[1] < out.shape[1] <= batch.input_ids.shape[1] + 6
    # A left-padded row generates the same tokens as the row alone.
    alone = tok(prompts[0], return_tensors="pt", add_special_tokens=False)
    out_alone = model.generate(**alone, max_new_tokens=6, do_sample=False)
    n = out_alone.shape[1] - alone.input_ids.shape[1]
    assert (
        out[0, batch.input_ids.shape[1] : batch.input_ids.shape[1] + n].tolist() == out_alone[0, -n:].tolist()
    )


def _digest(folder):
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def test_build_is_deterministic_and_seed_matters(tiny, tmp_path):
    again = build_tiny_model(tmp_path / "again")
    assert _digest(again) == _digest(tiny)
    other = build_tiny_model(tmp_path / "other", seed=1)
    assert _digest(other) != _digest(tiny)


def test_refuses_to_overwrite(tiny):
    with pytest.raises(FileExistsError, match="overwrite=True"):
        build_tiny_model(tiny)


def test_build_does_not_touch_global_rng(tmp_path):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny_model(tmp_path / "m", num_hidden_layers=1)
    assert torch.equal(torch.rand(3), expected)


def test_default_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMPTR1_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "a"
    monkeypatch.delenv("PROMPTR1_CACHE")
    assert default_cache_dir() == tmp_path / "x" / "promptr1"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "promptr1"


def test_tiny_model_path_builds_once(tmp_path, tiny):
    p = tiny_model_path(tmp_path)
    assert p == tmp_path / "tiny-qwen2"
    assert _digest(p) != "" and (p / "config.json").exists()
    mtime = (p / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_path(tmp_path) == p
    assert (p / "model.safetensors").stat().st_mtime_ns == mtime  # not rebuilt
    # Same weights as a direct build with the default seed.
    assert (p / "model.safetensors").read_bytes() == (tiny / "model.safetensors").read_bytes()


def test_tiny_model_path_uses_env_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("PROMPTR1_CACHE", str(tmp_path))
    calls = []
    import promptr1.testing.tiny_model as tm

    monkeypatch.setattr(
        tm, "build_tiny_model", lambda p, **kw: calls.append(p) or (p / "config.json").write_text("{}")
    )
    assert tiny_model_path() == tmp_path / "tiny-qwen2"
    assert len(calls) == 1


def test_atomic_build_dir_concurrent_and_stale(tmp_path):
    target = tmp_path / "thing"
    builds = []

    def build(tmp):
        builds.append(tmp)
        (tmp / "data.txt").write_text("v1")

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(atomic_build_dir(target, build, marker={"v": 1})))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [target] * 4
    assert (target / "data.txt").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]  # no temp folders left behind
    n = len(builds)
    atomic_build_dir(target, build, marker={"v": 1})
    assert len(builds) == n  # up to date: no rebuild

    def build2(tmp):
        (tmp / "data.txt").write_text("v2")

    atomic_build_dir(target, build2, marker={"v": 2})
    assert (target / "data.txt").read_text() == "v2"
    assert json.loads((target / "promptr1_build.json").read_text()) == {"v": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["thing"]
