"""Demonstrations for the supervised warm start: the agent turns that solve a bundled task.

:func:`demonstration` picks the writer by the task's ``meta``: the synthetic tasks'
(:func:`promptr1.envs.synthetic.demonstration`, ``meta["kind"]`` ``multihop``/``arith``) or the plan of
sub-questions that :mod:`promptr1.envs.geography` and any task with ``meta["subquestions"]`` and
``meta["expect"]`` carry (:func:`promptr1.envs.geography.demonstration`).
"""

from __future__ import annotations

from collections.abc import Mapping

from promptr1.envs.tasks import Task

__all__ = ["demonstration", "replies_on_track"]


def demonstration(task: Task) -> list[str]:
    """The agent turns that solve ``task`` (synthetic, or any task whose meta holds a plan of sub-questions)."""
    meta = task.meta if isinstance(task.meta, Mapping) else {}
    if meta.get("kind") in ("multihop", "arith"):
        from promptr1.envs.synthetic import demonstration as synthetic_demo

        return synthetic_demo(task)
    if meta.get("subquestions"):
        from promptr1.envs.geography import demonstration as plan_demo

        return plan_demo(task)
    raise ValueError(
        f"no demonstration for task {task.id or task.question[:40]!r}: the warm start writes demonstrations for "
        "the bundled 'synthetic' and 'geo' tasks, or for tasks whose meta has 'subquestions' and 'expect'. "
        "Pass demo= to run_sft for other tasks, or set sft_steps=0."
    )


def replies_on_track(task: Task, replies: list[str]) -> bool:
    """Did every env reply say what the task's plan expects (``meta["expect"]``, case-insensitive)?

    True when the task has no expectations. A demonstration that answers right after a wrong reply
    teaches the agent to ignore the replies, so the warm start drops it.

    >>> t = Task("q", ("Paris",), meta={"subquestions": ["a", "b"], "expect": ["France", "Paris"]})
    >>> replies_on_track(t, ["It is in France.", "The capital of France is Paris."]), replies_on_track(t, ["Italy", "Rome"])
    (True, False)
    """
    meta = task.meta if isinstance(task.meta, Mapping) else {}
    expect = meta.get("expect") or []
    if len(replies) < len(expect):
        return False
    return all(str(want).lower() in str(reply).lower() for want, reply in zip(expect, replies))
