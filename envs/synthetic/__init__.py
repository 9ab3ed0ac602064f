"""The synthetic world and its simulated expert, together: a stand-in for demos and tests.

* :mod:`.world`: the generated knowledge base, the multi-hop and word-problem tasks with disjoint
  train/test splits, and :func:`demonstration` (the turns that solve a task, for the SFT warm-start).
* :mod:`.expert`: :class:`SimExpert`, the ``sim`` env LLM that answers one sub-question at a time
  from the same world (the package root registers it as ``sim``).

Neither is a language model; ``docs/synthetic.md`` states the rules the expert follows.
"""

from __future__ import annotations

from .world import (
    KINDS,
    RELATIONS,
    Entity,
    Fact,
    Relation,
    SyntheticTasks,
    World,
    demonstration,
    make_world,
    stable_hash,
)

__all__ = [
    "KINDS",
    "RELATIONS",
    "Entity",
    "Fact",
    "Relation",
    "SimExpert",
    "SyntheticTasks",
    "World",
    "demonstration",
    "make_world",
    "stable_hash",
]


def __getattr__(name: str):  # the expert pulls in the backend layer; load it on demand
    if name == "SimExpert":
        from .expert import SimExpert

        return SimExpert
    raise AttributeError(f"module 'promptr1.envs.synthetic' has no attribute {name!r}")
