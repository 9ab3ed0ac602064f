"""``hf:ID_OR_PATH``: an in-process transformers model as the environment LLM.

Requests that arrive together are generated together: every :meth:`HFBackend.complete` /
:meth:`HFBackend.acomplete` call (from any thread or event loop) puts its prompt on a queue;
one background worker thread takes the first waiting request, waits up to
``batch_window_ms`` for more (at most ``max_batch_size``), left-pads them into one batch and
runs a single ``model.generate``. While a batch runs, new requests queue up and form the
next batch, so a vector env of N episodes costs about one batched generation per turn
instead of N sequential ones.

Sampling. ``temperature=0`` (the default) is greedy. With ``temperature > 0`` every request
draws from its own ``torch.Generator``, seeded from the backend ``seed`` (or the per-call
``seed=``) together with a hash of the request's messages and sampling parameters. A
seeded request therefore gets the same reply whichever other requests share its batch,
and the same question asked twice with the same seed gets the same reply. (Floating-point
results of a padded batch can differ from those of a lone row in the last bits, which in
rare near-ties changes a token; replies are reproducible bit for bit for the same batch
composition on the same device.) Without a seed, sampled requests draw fresh seeds.

Devices. ``device=None`` picks what ``accelerate`` detects (CUDA, MPS, XPU, ...) and falls
back to ``torch.cuda`` / CPU; ``dtype=None`` means float32 on CPU and bfloat16 (float16 where
bfloat16 is unsupported) on accelerators.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import json
import os
import queue
import secrets
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .base import BaseBackend, Completion, EnvLLMError, Message, validate_messages

__all__ = ["HFBackend", "request_seed", "smollm2_backend"]


def request_seed(seed: int, messages: Sequence[Message], temperature: float, top_p: float) -> int:
    """The sampling seed of one request: a 63-bit hash of the backend seed and the request.

    It depends only on the request itself, never on what else is in the batch.

    >>> m = [{"role": "user", "content": "hi"}]
    >>> request_seed(0, m, 1.0, 1.0) == request_seed(0, m, 1.0, 1.0)
    True
    >>> request_seed(0, m, 1.0, 1.0) == request_seed(1, m, 1.0, 1.0)
    False
    """
    payload = json.dumps(
        [int(seed), [[m["role"], m["content"]] for m in messages], float(temperature), float(top_p)],
        ensure_ascii=False,
    )
    return int.from_bytes(hashlib.sha256(payload.encode("utf-8")).digest()[:8], "big") >> 1


def _resolve_device(device: Any) -> Any:
    import torch

    if device is not None:
        return torch.device(device)
    try:  # accelerate knows about cuda/mps/xpu/npu and the local rank under `accelerate launch`
        from accelerate import PartialState

        return torch.device(PartialState().device)
    except Exception:  # noqa: BLE001 - accelerate missing or not initialisable
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _resolve_dtype(dtype: Any, device: Any) -> Any:
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and dtype != "auto":
        resolved = getattr(torch, dtype, None)
        if not isinstance(resolved, torch.dtype):
            raise ValueError(f"dtype must be a torch.dtype or its name (e.g. 'bfloat16'); got {dtype!r}.")
        return resolved
    if device.type == "cpu":
        return torch.float32
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


@dataclass
class _Request:
    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float
    top_p: float
    seed: int | None  # sampling seed (None for greedy)
    fixed_seed: bool  # True when the seed came from the caller (a retry would repeat the reply)
    stop: tuple[str, ...]
    submitted: float
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)


_STOP = object()  # sentinel that ends the worker thread


class HFBackend(BaseBackend):
    """A transformers causal LM answering chats with its own chat template, in batches.

    Parameters
    ----------
    model_id_or_path:
        Hub id or local folder (the hub is only reached if the files are not local), or a
        folder holding ``gguf_file``.
    gguf_file:
        Name of a GGUF file inside ``model_id_or_path`` to load (needs the ``gguf`` package).
    device, dtype:
        Where and in what precision to run; ``None`` picks automatically (see module doc).
    max_new_tokens, temperature, top_p, seed:
        Default sampling; each call may override them with ``max_tokens=``,
        ``temperature=``, ``top_p=``, ``seed=`` (and ``stop=[...]`` strings).
    batch_window_ms, max_batch_size:
        How long the worker waits for companions of the first queued request, and the
        largest batch it forms.
    system_prompt:
        Prepended as a system message to chats that do not start with one.
    model, tokenizer:
        Already-loaded objects to use instead of loading ``model_id_or_path`` (the model is
        used where it is unless ``device`` is given).
    """

    name = "hf"

    def __init__(
        self,
        model_id_or_path: str | os.PathLike | None = None,
        *,
        gguf_file: str | None = None,
        device: Any = None,
        dtype: Any = None,
        max_new_tokens: int = 256,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
        batch_window_ms: float = 5.0,
        max_batch_size: int = 16,
        system_prompt: str | None = None,
        model: Any = None,
        tokenizer: Any = None,
    ) -> None:
        super().__init__()
        import torch

        if model_id_or_path is None and (model is None or tokenizer is None):
            raise ValueError(
                "HFBackend needs a model: pass a hub id or folder ('hf:HuggingFaceTB/SmolLM2-135M-Instruct'), "
                "or both model= and tokenizer=."
            )
        if max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}.")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}.")
        _check_sampling(temperature, top_p)

        self.model_id = str(model_id_or_path) if model_id_or_path is not None else type(model).__name__
        if model is None or tokenizer is None:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            load_kw: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
            try:
                if tokenizer is None:
                    tokenizer = AutoTokenizer.from_pretrained(model_id_or_path, **load_kw)
                if model is None:
                    dev = _resolve_device(device)
                    model = AutoModelForCausalLM.from_pretrained(
                        model_id_or_path, dtype=_resolve_dtype(dtype, dev), **load_kw
                    )
                    model.to(dev)
            except OSError as exc:
                raise OSError(
                    f"HFBackend could not load {str(model_id_or_path)!r}: {exc}. Expected a local folder with "
                    "config.json and weights, or a hub id reachable from this machine (or already in the "
                    "Hugging Face cache). For the bundled offline model use env_llm='smollm2'."
                ) from exc
        elif device is not None:
            model.to(_resolve_device(device))
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"the tokenizer of {self.model_id!r} has no chat template, so chats cannot be turned into a "
                "prompt. Use an instruction-tuned model, or set tokenizer.chat_template (a Jinja string) "
                "and pass tokenizer=."
            )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = next(model.parameters()).device
        self.max_new_tokens = int(max_new_tokens)
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.seed = seed
        self.batch_window_s = max(0.0, float(batch_window_ms)) / 1000.0
        self.max_batch_size = int(max_batch_size)
        self.system_prompt = system_prompt
        self.deterministic = self.temperature == 0.0 or seed is not None

        eos: list[int] = []
        for src in (getattr(model.generation_config, "eos_token_id", None), tokenizer.eos_token_id):
            for i in src if isinstance(src, (list, tuple)) else [src]:
                if i is not None and int(i) not in eos:
                    eos.append(int(i))
        if not eos:
            raise ValueError(f"{self.model_id!r} defines no eos token; generation would never stop.")
        self._eos_ids = eos
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = getattr(model.generation_config, "pad_token_id", None)
        self._pad_id = int(pad if pad is not None else eos[0])
        self._max_positions = getattr(model.config, "max_position_embeddings", None)

        #: Counters for monitoring and tests: generate calls, requests served, batch sizes.
        self.stats: dict[str, Any] = {"batches": 0, "requests": 0, "batch_sizes": []}
        self._queue: queue.Queue = queue.Queue()
        self._worker: threading.Thread | None = None
        self._worker_lock = threading.Lock()
        self._closed = False
        self._torch = torch

    # ------------------------------------------------------------------ public API

    def complete(self, messages: Sequence[Message], **sampling: Any) -> Completion:
        """Generate a reply; blocks until the batch holding this request is done."""
        return self._submit(messages, sampling).result()

    async def acomplete(self, messages: Sequence[Message], **sampling: Any) -> Completion:
        """Async twin of :meth:`complete`: awaits the batch without holding a thread."""
        return await asyncio.wrap_future(self._submit(messages, sampling))

    def close(self) -> None:
        """Stop the batching worker (pending requests are still answered first)."""
        self._closed = True
        with self._worker_lock:
            if self._worker is not None and self._worker.is_alive():
                self._queue.put(_STOP)
                self._worker.join(timeout=60)
            self._worker = None
        super().close()

    def render_prompt(self, messages: Sequence[Message]) -> str:
        """The text the model sees for ``messages`` (system prompt added, generation prompt appended)."""
        msgs = validate_messages(messages)
        if self.system_prompt is not None and (not msgs or msgs[0]["role"] != "system"):
            msgs = [{"role": "system", "content": self.system_prompt}, *msgs]
        return self.tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def __repr__(self) -> str:
        return f"HFBackend({self.model_id!r}, device={str(self.device)!r}, temperature={self.temperature})"

    def cache_identity(self) -> dict[str, Any]:
        """What besides the messages and the call's sampling shapes a reply, for a response cache's key.

        The weights (a fingerprint: every tensor's name, shape and dtype and a strided sample of its bytes, so
        another checkpoint at the same path or a fine-tuned model differs), the tokenizer's chat template and
        size, the eos/pad ids, the default sampling (used when a call leaves a keyword out) and
        ``system_prompt``. The fingerprint is taken once, on first use; weights changed in place afterwards
        are not seen. The device is left out: the same weights on another device differ in the last bits of
        floating point only, like another batch composition, which no key can capture either.
        """
        weights = getattr(self, "_weights_fingerprint", None)
        if weights is None:
            torch = self._torch
            h = hashlib.sha256()
            n_params = 0
            with torch.inference_mode():
                for name, t in self.model.state_dict().items():
                    flat = t.detach().reshape(-1)
                    n_params += flat.numel()
                    h.update(f"{name}|{tuple(t.shape)}|{t.dtype}\n".encode())
                    if flat.numel():
                        sample = torch.cat([flat[:: max(1, flat.numel() // 64)][:64], flat[-1:]])
                        try:
                            h.update(sample.cpu().contiguous().view(torch.uint8).numpy().tobytes())
                        except (RuntimeError, TypeError, NotImplementedError):  # meta or quantized: shape only
                            pass
            weights = self._weights_fingerprint = f"{n_params}:{h.hexdigest()[:32]}"
        template = self.tokenizer.chat_template
        template = template if isinstance(template, str) else json.dumps(template, sort_keys=True, default=str)
        return {
            "weights": weights,
            "dtype": str(next(self.model.parameters()).dtype).replace("torch.", ""),
            "chat_template": hashlib.sha256(template.encode("utf-8")).hexdigest()[:32],
            "vocab": len(self.tokenizer),
            "eos_ids": list(self._eos_ids),
            "pad_id": self._pad_id,
            "defaults": {"max_new_tokens": self.max_new_tokens, "temperature": self.temperature,
                         "top_p": self.top_p, "seed": self.seed},
            "system_prompt": self.system_prompt,
        }

    # ------------------------------------------------------------------ request intake

    def _submit(self, messages: Sequence[Message], sampling: dict[str, Any]) -> concurrent.futures.Future:
        if self._closed:
            raise EnvLLMError("HFBackend is closed; create a new one.", kind="error")
        text = self.render_prompt(messages)
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        max_new = sampling.get("max_tokens", sampling.get("max_new_tokens"))
        max_new = self.max_new_tokens if max_new is None else int(max_new)
        if max_new < 1:
            raise ValueError(f"max_tokens must be >= 1, got {max_new}.")
        temperature = sampling.get("temperature")
        temperature = self.temperature if temperature is None else float(temperature)
        top_p = sampling.get("top_p")
        top_p = self.top_p if top_p is None else float(top_p)
        _check_sampling(temperature, top_p)
        stop = sampling.get("stop") or ()
        stop = (stop,) if isinstance(stop, str) else tuple(stop)
        seed = None
        base = sampling.get("seed", self.seed)
        if temperature > 0:
            if base is None:
                seed = secrets.randbits(63)
            else:
                seed = request_seed(base, validate_messages(messages), temperature, top_p)
        fut: concurrent.futures.Future = concurrent.futures.Future()
        if self._max_positions and len(ids) + max_new > self._max_positions:
            fut.set_exception(
                EnvLLMError(
                    f"prompt of {len(ids)} tokens plus max_tokens={max_new} exceeds the model's "
                    f"{self._max_positions} positions; shorten the chat (e.g. max_response_chars) or lower max_tokens.",
                    kind="bad_request",
                )
            )
            return fut
        req = _Request(
            ids, max_new, temperature, top_p, seed, base is not None, stop, time.perf_counter(), fut
        )
        self._ensure_worker()
        self._queue.put(req)
        return fut

    def _ensure_worker(self) -> None:
        with self._worker_lock:
            if self._worker is None or not self._worker.is_alive():
                self._worker = threading.Thread(
                    target=self._worker_loop, name="promptr1-hf-batcher", daemon=True
                )
                self._worker.start()

    # ------------------------------------------------------------------ batching worker

    def _worker_loop(self) -> None:
        while True:
            first = self._queue.get()
            if first is _STOP:
                return
            batch = [first]
            deadline = time.perf_counter() + self.batch_window_s
            stop_after = False
            while len(batch) < self.max_batch_size:
                remaining = deadline - time.perf_counter()
                try:
                    item = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop_after = True
                    break
                batch.append(item)
            self._run_batch(batch)
            if stop_after:
                return

    def _run_batch(self, batch: list[_Request]) -> None:
        """Generate ``batch``; on out-of-memory, retry it in halves before giving up."""
        try:
            results = self._generate(batch)
        except Exception as exc:  # noqa: BLE001 - every failure becomes an EnvLLMError
            if _is_oom(exc) and len(batch) > 1:
                self._empty_cache()
                half = len(batch) // 2
                self._run_batch(batch[:half])
                self._run_batch(batch[half:])
                return
            err = _to_env_error(exc, len(batch))
            for req in batch:
                if not req.future.done():
                    req.future.set_exception(err)
            return
        for req, res in zip(batch, results):
            if not req.future.done():
                if isinstance(res, BaseException):
                    req.future.set_exception(res)
                else:
                    req.future.set_result(res)

    def _empty_cache(self) -> None:
        torch = self._torch
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _generate(self, batch: list[_Request]) -> list[Completion | BaseException]:
        torch = self._torch
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteriaList

        width = max(len(r.prompt_ids) for r in batch)
        input_ids = torch.full((len(batch), width), self._pad_id, dtype=torch.long)
        attention = torch.zeros((len(batch), width), dtype=torch.long)
        for i, r in enumerate(batch):  # left padding
            n = len(r.prompt_ids)
            input_ids[i, width - n :] = torch.tensor(r.prompt_ids, dtype=torch.long)
            attention[i, width - n :] = 1
        input_ids, attention = input_ids.to(self.device), attention.to(self.device)
        max_new = max(r.max_new_tokens for r in batch)
        config = GenerationConfig(
            max_new_tokens=max_new,
            do_sample=False,  # sampling happens in _PerRowSampler, greedy argmax then picks its token
            num_beams=1,
            eos_token_id=self._eos_ids,
            pad_token_id=self._pad_id,
            temperature=None,
            top_p=None,
            top_k=None,
        )
        sampler = _PerRowSampler(batch, self.device)
        limits = _PerRowLimit([r.max_new_tokens for r in batch], width, self.device)
        with torch.inference_mode():
            out = self.model.generate(
                input_ids=input_ids,
                attention_mask=attention,
                generation_config=config,
                logits_processor=LogitsProcessorList([sampler]) if sampler.active else None,
                stopping_criteria=StoppingCriteriaList([limits]),
            )
        self.stats["batches"] += 1
        self.stats["requests"] += len(batch)
        self.stats["batch_sizes"].append(len(batch))
        now = time.perf_counter()
        gen = out[:, width:].tolist()
        results: list[Completion | BaseException] = []
        for r, row in zip(batch, gen):
            row = row[: r.max_new_tokens]
            finish = "length"
            for j, tok in enumerate(row):
                if tok in self._eos_ids:
                    row, finish = row[:j], "stop"
                    break
            text = self.tokenizer.decode(row, skip_special_tokens=True)
            for s in r.stop:
                k = text.find(s) if s else -1
                if k >= 0:
                    text, finish = text[:k], "stop"
            if not text.strip():
                results.append(
                    EnvLLMError(
                        f"{self.model_id} returned an empty reply ({len(row)} tokens).",
                        kind="empty_reply",
                        retryable=r.temperature > 0 and not r.fixed_seed,
                    )
                )
                continue
            results.append(
                Completion(
                    text=text,
                    latency_s=now - r.submitted,
                    prompt_tokens=len(r.prompt_ids),
                    completion_tokens=len(row),
                    model=self.model_id,
                    extra={"finish_reason": finish, "batch_size": len(batch), "seed": r.seed},
                )
            )
        return results


# ---------------------------------------------------------------------- generation helpers


def _check_sampling(temperature: float, top_p: float) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 means greedy), got {temperature}.")
    if not 0 < top_p <= 1:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}.")


class _PerRowSampler:
    """Logits processor that samples each sampled row with its own generator.

    It returns scores that are ``-inf`` except at the chosen token, so ``generate``'s greedy
    step picks exactly that token; greedy rows pass through unchanged.
    """

    def __init__(self, batch: list[_Request], device: Any) -> None:
        import torch

        self.rows = []
        for i, r in enumerate(batch):
            if r.temperature > 0:
                g = torch.Generator(device=device)
                g.manual_seed(int(r.seed))
                self.rows.append((i, r.temperature, r.top_p, g))
        self.active = bool(self.rows)

    def __call__(self, input_ids, scores):
        import torch

        scores = scores.clone()
        for i, temperature, top_p, g in self.rows:
            probs = torch.softmax(scores[i].float() / temperature, dim=-1)
            if top_p < 1.0:
                sorted_p, order = torch.sort(probs, descending=True)
                cum = torch.cumsum(sorted_p, dim=-1)
                drop = cum - sorted_p >= top_p  # keep the smallest prefix whose mass reaches top_p
                sorted_p = sorted_p.masked_fill(drop, 0.0)
                probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
            tok = torch.multinomial(probs, 1, generator=g)
            row = torch.full_like(scores[i], float("-inf"))
            row[tok] = 0.0
            scores[i] = row
        return scores


class _PerRowLimit:
    """Stopping criterion: row ``i`` is done after ``limits[i]`` new tokens."""

    def __init__(self, limits: list[int], prompt_width: int, device: Any) -> None:
        import torch

        self.limits = torch.tensor(limits, dtype=torch.long, device=device)
        self.width = prompt_width

    def __call__(self, input_ids, scores, **kwargs):
        return (input_ids.shape[1] - self.width) >= self.limits


def _is_oom(exc: BaseException) -> bool:
    import torch

    oom_types = tuple(
        t
        for t in (getattr(torch.cuda, "OutOfMemoryError", None), getattr(torch, "OutOfMemoryError", None))
        if t
    )
    return isinstance(exc, (MemoryError, *oom_types)) or "out of memory" in str(exc).lower()


def _to_env_error(exc: BaseException, batch_size: int) -> EnvLLMError:
    if isinstance(exc, EnvLLMError):
        return exc
    if _is_oom(exc):
        return EnvLLMError(
            f"out of memory generating a batch of {batch_size}: {exc}. Lower max_batch_size or max_tokens, "
            "or use a smaller dtype.",
            kind="server_error",
            retryable=True,
        )
    return EnvLLMError(f"generation failed ({type(exc).__name__}: {exc}).", kind="error")


def smollm2_backend(**kwargs: Any) -> HFBackend:
    """The ``smollm2`` env LLM: :class:`HFBackend` on the SmolLM2-135M-Instruct conversion cache.

    Keyword arguments go to :class:`HFBackend` (``cache_dir=`` to
    :func:`~promptr1.llm_backends.smollm2.smollm2_model_dir`).
    """
    from .smollm2 import smollm2_model_dir

    folder = smollm2_model_dir(kwargs.pop("cache_dir", None))
    kwargs.setdefault("max_new_tokens", 256)
    backend = HFBackend(folder, **kwargs)
    backend.model_id = "smollm2-135m-instruct"
    # PromptCollabEnv's generic env system prompt derails this 135M model ("What is the capital of France?"
    # -> "L'Alma, la France, est la capital de France."); with no system message its chat template's own
    # identity prompt applies and it answers "The capital of France is Paris."
    backend.preferred_system_prompt = None
    return backend
