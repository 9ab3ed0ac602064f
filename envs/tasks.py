"""Tasks (a question and its gold answers) and the sources that yield them.

Sources: the official Prompt-R1 parquet schema, JSONL with ``question``/``answers``, and the
bundled synthetic generator (:mod:`promptr1.envs.synthetic`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

__all__ = ["DEFAULT_INSTRUCTION", "Task", "TaskSource"]

# Our own wording of the protocol instruction used when a task source has none (the official
# parquet rows carry their own instruction text, which is used verbatim for them).
DEFAULT_INSTRUCTION = (
    "Work with the large language model to answer the question. In each turn, first think briefly "
    "inside <think></think>, then write one request for the large language model inside "
    "<interaction_prompt></interaction_prompt>. Its reply comes back inside "
    "<interaction_response></interaction_response>. Ask for one thing at a time and build on the "
    "earlier replies. When you know the answer, write <think>(your final reasoning)</think> "
    "<answer>(the final answer only)</answer>."
)


@dataclass(frozen=True)
class Task:
    """One question for an episode.

    ``answers`` are the gold answers (any match counts). ``ability`` is the task type used to
    pick metrics: ``"qa"``/``"multihop_qa"``, ``"math"``, ``"text"``. ``meta`` holds what a
    simulated expert needs (e.g. the synthetic knowledge-base facts); it never reaches the agent.
    """

    question: str
    answers: tuple[str, ...]
    instruction: str = DEFAULT_INSTRUCTION
    ability: str = "qa"
    data_source: str = ""
    id: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.question, str) or not self.question.strip():
            raise ValueError(f"Task.question must be a non-empty string, got {self.question!r}.")
        answers = self.answers
        if isinstance(answers, str):
            answers = (answers,)
        answers = tuple(str(a) for a in answers)
        object.__setattr__(self, "answers", answers)

    @property
    def prompt(self) -> str:
        """The agent's first user message: ``"Question: " + q + "\\n" + instruction`` (ref)."""
        return "Question: " + self.question + "\n" + self.instruction


@runtime_checkable
class TaskSource(Protocol):
    """A finite, indexable collection of tasks."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> Task: ...


class ListTaskSource(Sequence):
    """Tasks held in memory."""

    def __init__(self, tasks: Sequence[Task], name: str = "list") -> None:
        if len(tasks) == 0:
            raise ValueError(f"task source {name!r} is empty; give at least one task.")
        self._tasks = list(tasks)
        self.name = name

    def __len__(self) -> int:
        return len(self._tasks)

    def __getitem__(self, index):  # type: ignore[override]
        return self._tasks[index]

    def __repr__(self) -> str:
        return f"ListTaskSource(name={self.name!r}, n={len(self)})"
