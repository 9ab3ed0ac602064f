"""HFBackend on the tiny random Qwen2 model: chat template, batching, sampling, errors."""

from __future__ import annotations

import asyncio
import threading

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from promptr1.llm_backends import EnvLLMError, LLMBackend, make_backend
from promptr1.llm_backends.hf_backend import HFBackend, request_seed
from promptr1.testing.tiny_model import build_tiny_model


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("hf") / "tiny")


@pytest.fixture(scope="module")
def loaded(tiny_dir):
    tok = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_dir)
    return model, tok


def make(loaded, **kw):
    model, tok = loaded
    kw.setdefault("max_new_tokens", 12)
    return HFBackend("tiny", model=model, tokenizer=tok, **kw)


class GenerateSpy:
    """Wraps model.generate, recording the input ids of every call."""

    def __init__(self, model):
        self.inner = model.generate
        self.calls: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __call__(self, *args, **kwargs):
        self.calls.append((kwargs["input_ids"].clone(), kwargs["attention_mask"].clone()))
        return self.inner(*args, **kwargs)


def chat(i: int = 0) -> list[dict[str, str]]:
    return [{"role": "user", "content": f"Question {i}: " + "what is it? " * (i % 4 + 1)}]


def test_is_an_llm_backend(loaded):
    b = make(loaded)
    assert isinstance(b, LLMBackend)
    assert b.name == "hf"
    b.close()


def test_prompt_is_the_models_chat_template(loaded, monkeypatch):
    model, tok = loaded
    b = make(loaded)
    spy = GenerateSpy(model)
    monkeypatch.setattr(model, "generate", spy)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    c = b.complete(msgs)
    expected = "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n"
    assert b.render_prompt(msgs) == expected
    ((ids, mask),) = spy.calls
    assert tok.decode(ids[0]) == expected
    assert mask.all()
    assert c.prompt_tokens == ids.shape[1]
    assert 0 < c.completion_tokens <= 12
    assert c.extra["finish_reason"] in ("stop", "length")
    b.close()


def test_system_prompt_added_only_when_missing(loaded):
    b = make(loaded, system_prompt="You are an expert.")
    assert b.render_prompt([{"role": "user", "content": "x"}]).startswith(
        "<|im_start|>system\nYou are an expert.<|im_end|>\n<|im_start|>user\nx"
    )
    own = b.render_prompt([{"role": "system", "content": "Mine."}, {"role": "user", "content": "x"}])
    assert "You are an expert." not in own and own.startswith("<|im_start|>system\nMine.")
    b.close()


def test_concurrent_requests_are_one_batch(loaded, monkeypatch):
    model, _ = loaded
    b = make(loaded, batch_window_ms=2000, max_batch_size=8)
    spy = GenerateSpy(model)
    monkeypatch.setattr(model, "generate", spy)
    barrier = threading.Barrier(8)
    results = [None] * 8

    def worker(i):
        barrier.wait()
        results[i] = b.complete(chat(i))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(spy.calls) == 1
    ids, mask = spy.calls[0]
    assert ids.shape[0] == 8
    # Left padding: every row ends with a real token; pads only at the start.
    assert mask[:, -1].all()
    assert all(r.extra["batch_size"] == 8 for r in results)
    assert b.stats["batch_sizes"] == [8]
    b.close()


def test_max_batch_size_caps_batches(loaded, monkeypatch):
    model, _ = loaded
    b = make(loaded, batch_window_ms=500, max_batch_size=3, max_new_tokens=4)
    spy = GenerateSpy(model)
    monkeypatch.setattr(model, "generate", spy)
    barrier = threading.Barrier(7)

    def worker(i):
        barrier.wait()
        b.complete(chat(i))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(7)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    sizes = [c[0].shape[0] for c in spy.calls]
    assert sum(sizes) == 7 and max(sizes) <= 3
    b.close()


def test_greedy_is_deterministic_and_batch_independent(loaded):
    solo = make(loaded, batch_window_ms=0)
    alone = [solo.complete(chat(i)).text for i in range(4)]
    assert [solo.complete(chat(i)).text for i in range(4)] == alone
    batched = make(loaded, batch_window_ms=2000, max_batch_size=4)
    barrier = threading.Barrier(4)
    out = [None] * 4

    def worker(i):
        barrier.wait()
        out[i] = batched.complete(chat(i)).text

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert batched.stats["batch_sizes"] == [4]
    assert out == alone
    solo.close()
    batched.close()


def test_seeded_sampling_is_reproducible(loaded):
    b = make(loaded, temperature=1.0, seed=7, max_new_tokens=16)
    assert b.deterministic
    first = b.complete(chat(1))
    assert b.complete(chat(1)).text == first.text
    assert first.extra["seed"] == request_seed(7, chat(1), 1.0, 1.0)
    # Another seed (per call or per backend) gives another sample of a random 4k-vocab model.
    assert b.complete(chat(1), seed=8).text != first.text
    other = make(loaded, temperature=1.0, seed=8, max_new_tokens=16)
    assert other.complete(chat(1)).text == b.complete(chat(1), seed=8).text
    # Sampling differs from greedy.
    assert make(loaded, max_new_tokens=16).complete(chat(1)).text != first.text
    for x in (b, other):
        x.close()


def test_seeded_sample_does_not_depend_on_batch_companions(loaded):
    solo = make(loaded, temperature=1.0, seed=3, batch_window_ms=0, max_new_tokens=10)
    alone = [solo.complete(chat(i)).text for i in range(5)]
    assert solo.stats["batch_sizes"] == [1] * 5
    b = make(loaded, temperature=1.0, seed=3, batch_window_ms=2000, max_batch_size=5, max_new_tokens=10)
    barrier = threading.Barrier(5)
    out = [None] * 5

    def worker(i):
        barrier.wait()
        out[i] = b.complete(chat(i)).text

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.stats["batch_sizes"][-1] == 5
    assert out == alone
    b.close()


def test_unseeded_sampling_varies(loaded):
    b = make(loaded, temperature=1.0, max_new_tokens=16)
    assert not b.deterministic
    texts = {b.complete(chat(2)).text for _ in range(3)}
    assert len(texts) > 1
    b.close()


def test_top_p_tiny_is_greedy(loaded):
    # With top_p -> 0 only the most likely token survives, whatever the seed.
    greedy = make(loaded).complete(chat(3)).text
    b = make(loaded, temperature=1.0, top_p=1e-6, seed=1)
    assert b.complete(chat(3)).text == greedy
    assert b.complete(chat(3), seed=99).text == greedy
    b.close()


def test_async_path_batches(loaded, monkeypatch):
    model, _ = loaded
    b = make(loaded, batch_window_ms=2000, max_batch_size=6)
    spy = GenerateSpy(model)
    monkeypatch.setattr(model, "generate", spy)

    async def main():
        return await asyncio.gather(*(b.acomplete(chat(i)) for i in range(6)))

    results = asyncio.run(main())
    assert len(spy.calls) == 1 and spy.calls[0][0].shape[0] == 6
    solo = make(loaded, batch_window_ms=0)
    sync = [solo.complete(chat(i)).text for i in range(6)]
    assert [r.text for r in results] == sync
    b.close()


def test_per_request_max_tokens_in_one_batch(loaded):
    b = make(loaded, batch_window_ms=2000, max_batch_size=2, max_new_tokens=30)
    barrier = threading.Barrier(2)
    out = {}

    def worker(limit):
        barrier.wait()
        out[limit] = b.complete(chat(0), max_tokens=limit)

    threads = [threading.Thread(target=worker, args=(n,)) for n in (3, 20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert b.stats["batch_sizes"] == [2]
    assert out[3].completion_tokens <= 3
    assert out[20].completion_tokens <= 20
    # Greedy: the short reply is a prefix of the long one.
    if out[3].extra["finish_reason"] == "length":
        assert out[20].text.startswith(out[3].text)
    b.close()


def test_stop_strings_cut_the_reply(loaded):
    b = make(loaded, max_new_tokens=12)
    full = b.complete(chat(0)).text
    k = -1
    for start in range(len(full) // 2, len(full) - 1):
        cut_at = full[start : start + 2]
        k = full.find(cut_at)
        if k > 0:
            break
    assert k > 0, full
    cut = b.complete(chat(0), stop=["never-appears", cut_at])
    assert cut.text == full[:k]
    assert cut.extra["finish_reason"] == "stop"
    b.close()


def test_generation_failure_is_env_llm_error(loaded, monkeypatch):
    model, _ = loaded
    b = make(loaded)

    def boom(*a, **k):
        raise RuntimeError("device lost")

    monkeypatch.setattr(model, "generate", boom)
    with pytest.raises(EnvLLMError, match="device lost") as ei:
        b.complete(chat(0))
    assert ei.value.kind == "error"

    async def main():
        return await b.acomplete(chat(0))

    with pytest.raises(EnvLLMError):
        asyncio.run(main())
    b.close()


def test_oom_splits_the_batch(loaded, monkeypatch):
    model, _ = loaded
    inner = model.generate
    sizes = []

    def picky(*a, **k):
        n = k["input_ids"].shape[0]
        if n > 2:
            sizes.append(-n)
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
        sizes.append(n)
        return inner(*a, **k)

    monkeypatch.setattr(model, "generate", picky)
    b = make(loaded, batch_window_ms=1000, max_batch_size=5, max_new_tokens=4)

    async def main():
        return await asyncio.gather(*(b.acomplete(chat(i)) for i in range(5)))

    results = asyncio.run(main())
    assert len(results) == 5 and all(r.text for r in results)
    # 5 fails, then 2 succeeds and 3 fails, then 1 + 2 succeed.
    assert sizes == [-5, 2, -3, 1, 2]
    b.close()


def test_oom_single_request_is_retryable_error(loaded, monkeypatch):
    model, _ = loaded

    def oom(*a, **k):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(model, "generate", oom)
    with pytest.raises(EnvLLMError) as ei:
        make(loaded).complete(chat(0))
    assert ei.value.kind == "server_error" and ei.value.retryable


def test_empty_reply_is_an_error(loaded, monkeypatch):
    model, tok = loaded
    eos = tok.convert_tokens_to_ids("<|im_end|>")

    def instant_eos(*a, **k):
        ids = k["input_ids"]
        return torch.cat([ids, torch.full((ids.shape[0], 1), eos)], dim=1)

    monkeypatch.setattr(model, "generate", instant_eos)
    with pytest.raises(EnvLLMError) as ei:
        make(loaded).complete(chat(0))
    assert ei.value.kind == "empty_reply"


def test_prompt_too_long_is_bad_request(loaded):
    b = make(loaded)
    long_chat = [{"role": "user", "content": "word " * 5000}]
    with pytest.raises(EnvLLMError) as ei:
        b.complete(long_chat)
    assert ei.value.kind == "bad_request" and "max_tokens" in str(ei.value)
    b.close()


def test_bad_arguments(loaded):
    model, _ = loaded
    with pytest.raises(ValueError, match="temperature"):
        make(loaded, temperature=-1)
    with pytest.raises(ValueError, match="top_p"):
        make(loaded, top_p=0)
    with pytest.raises(ValueError, match="needs a model"):
        HFBackend(model=model)
    b = make(loaded)
    with pytest.raises(ValueError, match="role"):
        b.complete([{"role": "robot", "content": "x"}])
    b.close()
    with pytest.raises(EnvLLMError, match="closed"):
        b.complete(chat(0))


def test_missing_chat_template_is_explained(tiny_dir, loaded):
    model, _ = loaded
    tok = transformers.AutoTokenizer.from_pretrained(tiny_dir)
    tok.chat_template = None
    with pytest.raises(ValueError, match="chat template"):
        HFBackend("x", model=model, tokenizer=tok)


def test_make_backend_hf_spec_loads_from_folder(tiny_dir):
    b = make_backend(f"hf:{tiny_dir}", max_new_tokens=5, device="cpu")
    assert isinstance(b, HFBackend)
    assert b.device.type == "cpu" and b.model.dtype == torch.float32
    c = b.complete(chat(0))
    assert c.model == str(tiny_dir) and c.completion_tokens <= 5
    b.close()


def test_missing_folder_error_names_the_fix(tmp_path):
    with pytest.raises(OSError, match="smollm2"):
        HFBackend(str(tmp_path / "nope"))
