"""A ``record(key, value)`` logger (TensorBoard + console progress bar) and trainer callbacks.

In the spirit of stable-baselines3's logger: code anywhere in a step calls
``logger.record("reward/mean", 0.3)``; values recorded several times in a step are averaged;
``logger.dump(step)`` writes them all to TensorBoard and to the console. Keys live in
namespaces: ``rollout/``, ``reward/``, ``losses/``, ``env_llm/``, ``time/``.

On the console, a progress bar when the console is a terminal (its description says where the step in hand is:
``episodes 5/16``, then ``update 2/4 micro-batches``, from :meth:`Logger.within_step`); otherwise, or with
``progress=False``, one plain line per dump, which a log file keeps readable.

>>> import io
>>> log = Logger(log_dir=None, progress=False, total_steps=6, stream=io.StringIO())
>>> log.record("reward/mean", 1.0); log.record("reward/mean", 0.0)
>>> log.dump(step=1)["reward/mean"]
0.5
>>> print(log.stream.getvalue(), end="")
train: step 1/6: reward 0.5
"""

from __future__ import annotations

import math
import sys
from collections import defaultdict
from collections.abc import Mapping
from typing import Any, TextIO

__all__ = ["Callback", "CallbackList", "Logger", "peak_memory_gb"]

#: Keys shown on the console progress bar (short name -> key), when present.
PROGRESS_KEYS = {
    "reward": "reward/mean",
    "f1": "reward/answer_f1",
    "fmt": "reward/format_rate",
    "turns": "rollout/turns_mean",
    "kl": "losses/kl",
    "s/step": "time/step_s",
    "nll": "sft/nll",
}


class Logger:
    """Collects scalars and text for one step; writes them to TensorBoard and the console."""

    def __init__(self, log_dir: str | None, *, progress: bool = True, total_steps: int | None = None,
                 initial_step: int = 0, enabled: bool = True, stream: TextIO | None = None,
                 name: str = "train") -> None:
        """``progress``: a bar on a terminal (else plain lines); False: plain lines. ``stream``: the console
        (default ``sys.stderr``). ``enabled=False`` (processes other than the main one): nothing is written.
        ``name``: what the console lines and the bar are labelled (``train``, ``sft``)."""
        self.enabled = enabled
        self.name = name
        self.stream = stream if stream is not None else sys.stderr
        self.total_steps = total_steps
        self._values: dict[str, list[float]] = defaultdict(list)
        self._texts: dict[str, str] = {}
        self.history: list[dict[str, float]] = []
        self.writer = None
        if enabled and log_dir is not None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=log_dir)
        self.bar = None
        self.lines = enabled and not (progress and _is_terminal(self.stream))
        if enabled and not self.lines:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total_steps, initial=initial_step, desc=name, unit="step",
                            dynamic_ncols=True, file=self.stream)

    def record(self, key: str, value: Any) -> None:
        """Record a scalar for this step (several records of one key are averaged)."""
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"Logger.record({key!r}, ...) expects a number, got {type(value).__name__}.") from None
        self._values[key].append(v)

    def record_text(self, key: str, text: str) -> None:
        """Record a text (e.g. a transcript); written as TensorBoard text at the next dump."""
        self._texts[key] = text

    def record_hparams(self, hparams: Mapping[str, Any]) -> None:
        """Write the hyperparameters once, as a Markdown table (TensorBoard's TEXT tab)."""
        if self.writer is None:
            return
        rows = ["| option | value |", "|---|---|"] + [f"| {k} | `{v!r}` |" for k, v in hparams.items()]
        self.writer.add_text("hparams", "\n".join(rows), 0)

    def dump(self, step: int) -> dict[str, float]:
        """Write this step's values; return their means (NaN-free ones)."""
        means = {k: sum(v) / len(v) for k, v in self._values.items() if v}
        self._values.clear()
        if self.writer is not None:
            for k, v in means.items():
                if math.isfinite(v):
                    self.writer.add_scalar(k, v, step)
            for k, t in self._texts.items():
                # TensorBoard renders Markdown; indent to keep the transcript verbatim.
                self.writer.add_text(k, "    " + t.replace("\n", "\n    "), step)
            self.writer.flush()
        self._texts.clear()
        self.history.append({"step": float(step), **means})
        post = {short: f"{means[key]:.3g}" for short, key in PROGRESS_KEYS.items() if key in means}
        if self.bar is not None:
            self.bar.set_description_str(self.name, refresh=False)
            self.bar.set_postfix(post, refresh=False)
            self.bar.update(step - self.bar.n)
        elif self.lines:
            of = f"/{self.total_steps}" if self.total_steps else ""
            shown = ", ".join(f"{short} {value}" for short, value in post.items())
            line = f"{self.name}: step {step}{of}" + (f": {shown}" if shown else "")
            print(line, file=self.stream, flush=True)
        return means

    def within_step(self, text: str) -> None:
        """Say where the step in hand is (``episodes 5/16``, ``update 2/4 micro-batches``) on the bar; plain
        lines are per step only."""
        if self.bar is not None:
            self.bar.set_description_str(f"{self.name} [{text}]", refresh=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()


class Callback:
    """Hooks into the training loop (as stable-baselines3's ``BaseCallback``).

    ``on_step_end`` returns False to stop training early.
    """

    def on_train_begin(self, trainer: Any) -> None:
        pass

    def on_rollout_end(self, trainer: Any, episodes: list[Any]) -> None:
        pass

    def on_step_end(self, trainer: Any, step: int, metrics: Mapping[str, float]) -> bool:
        return True

    def on_checkpoint(self, trainer: Any, path: str) -> None:
        pass

    def on_train_end(self, trainer: Any) -> None:
        pass


class CallbackList(Callback):
    def __init__(self, callbacks: list[Callback] | tuple[Callback, ...] = ()) -> None:
        self.callbacks = list(callbacks)

    def on_train_begin(self, trainer: Any) -> None:
        for c in self.callbacks:
            c.on_train_begin(trainer)

    def on_rollout_end(self, trainer: Any, episodes: list[Any]) -> None:
        for c in self.callbacks:
            c.on_rollout_end(trainer, episodes)

    def on_step_end(self, trainer: Any, step: int, metrics: Mapping[str, float]) -> bool:
        keep = True
        for c in self.callbacks:
            keep = (c.on_step_end(trainer, step, metrics) is not False) and keep
        return keep

    def on_checkpoint(self, trainer: Any, path: str) -> None:
        for c in self.callbacks:
            c.on_checkpoint(trainer, path)

    def on_train_end(self, trainer: Any) -> None:
        for c in self.callbacks:
            c.on_train_end(trainer)


def _is_terminal(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def peak_memory_gb() -> dict[str, float]:
    """This process's peak memory so far, in GiB: ``peak_rss_gb`` (resident RAM, the operating system's count; absent
    where the platform has no ``resource`` module) and, once CUDA is in use, ``peak_gpu_gb`` (the largest allocation
    torch made on the current GPU)."""
    import sys

    out: dict[str, float] = {}
    try:
        import resource
    except ImportError:  # Windows
        resource = None  # type: ignore[assignment]
    if resource is not None:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        out["peak_rss_gb"] = rss / 2**30 if sys.platform == "darwin" else rss / 2**20
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        out["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 2**30
    return out
