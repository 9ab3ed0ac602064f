"""Tasks (a question and its gold answers) and the sources that yield them.

Sources: the official Prompt-R1 parquet schema, JSONL with ``question``/``answers``, the
bundled synthetic generator (:mod:`promptr1.envs.synthetic`), and datasets read with the ``datasets``
library (``hf:NAME_OR_FOLDER[:SPLIT]``, :func:`load_hf_tasks`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from promptr1.envs.task_types import TASK_TYPES, infer_set_type, row_type, type_summary
from promptr1.core.registry import Registry

__all__ = [
    "DEFAULT_INSTRUCTION",
    "REFERENCE_ABILITY",
    "REFERENCE_DATA_SOURCE",
    "TASK_SOURCES",
    "ListTaskSource",
    "Task",
    "TaskSource",
    "assign_types",
    "convert_to_parquet",
    "check_task_specs",
    "load_hf_tasks",
    "load_jsonl",
    "load_parquet",
    "load_tasks",
    "read_records",
    "reference_answers",
    "split_prompt",
    "type_summary",
]

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
    type_evidence: str = ""
    """Why ``ability`` is what it is (see :mod:`promptr1.envs.task_types`); empty when it was given."""

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

    def describe_types(self) -> str:
        """Which type each row got and why (see :func:`promptr1.envs.task_types.type_summary`)."""
        return type_summary(self._tasks)


# The official rows put "Question: q\n" before an instruction that starts with this sentence; questions
# themselves can contain newlines (math), so we split at the instruction when we can recognise it.
_REF_INSTRUCTION_START = "\nFirst, provide a simple explanation of the question"


def split_prompt(content: str) -> tuple[str, str]:
    r"""Split an official first message into (question, instruction); recomposes exactly.

    >>> split_prompt("Question: Who wrote Torch?\nFirst, provide a simple explanation of the question.")
    ('Who wrote Torch?', 'First, provide a simple explanation of the question.')
    """
    body = content[len("Question: "):] if content.startswith("Question: ") else content
    cut = body.find(_REF_INSTRUCTION_START)
    if cut < 0:
        cut = body.find("\n")
    if cut < 0:
        return body, ""
    return body[:cut], body[cut + 1:]


def _answers_list(value) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,)
    return tuple(str(v) for v in value)


def _task_from_official_row(row: Mapping, index: int, name: str) -> Task:
    prompt = row.get("prompt")
    if not prompt:
        raise ValueError(f"{name} row {index}: 'prompt' is empty; expected a chat list with a user message.")
    user = [m for m in prompt if m.get("role") == "user"]
    content = (user[-1] if user else prompt[-1])["content"]
    question, instruction = split_prompt(content)
    rm = row.get("reward_model") or {}
    gold = rm.get("ground_truth") if isinstance(rm, Mapping) else None
    if gold is None:
        raise ValueError(
            f"{name} row {index}: no gold answers in reward_model.ground_truth; every row needs that list."
        )
    answers = _answers_list(gold)  # an empty list is kept, as the reference keeps it (the answer term is 0)
    ds = row.get("data_source") or ""
    return Task(
        question=question if question.strip() else content,
        answers=answers,
        instruction=instruction,
        ability=row.get("ability") or "",
        data_source=ds,
        id=f"{Path(name).stem}-{index}",
    )


def assign_types(tasks: Sequence[Task], name: str, task_type: str | None = None) -> list[Task]:
    """Give every task its type (``qa``/``math``/``text``) and the evidence for it.

    ``task_type`` (the user's choice) types every row; otherwise the rules of
    :mod:`promptr1.envs.task_types` apply to the set named ``name``.
    """
    if task_type is not None:
        if task_type not in TASK_TYPES:
            raise ValueError(f"task_type must be one of {', '.join(TASK_TYPES)}; got {task_type!r}.")
        return [replace(t, ability=task_type, type_evidence=f"set by the user (task_type={task_type})")
                for t in tasks]
    sources = Counter(t.data_source for t in tasks if t.data_source)
    label = sources.most_common(1)[0][0] if sources else name
    set_type, set_why = infer_set_type(label, [t.answers for t in tasks])
    out = []
    for t in tasks:
        kind, why = row_type(set_type, t.question, t.answers, t.ability)
        out.append(replace(t, ability=kind, type_evidence=why or set_why))
    return out


def load_parquet(path: str | os.PathLike, *, task_type: str | None = None) -> ListTaskSource:
    """Tasks from a file in the official Prompt-R1 parquet schema.

    Columns: ``data_source``, ``prompt`` (a chat list whose user message is
    ``"Question: q\\n" + instruction``), ``ability``, ``reward_model.ground_truth`` (list of answers).
    """
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {str(path)!r} does not exist; give a .parquet or .jsonl path, or 'synthetic'.")
    table = pq.read_table(path)
    missing = {"prompt", "reward_model"} - set(table.column_names)
    if missing:
        raise ValueError(
            f"{path.name} is not in the Prompt-R1 schema: missing column(s) {sorted(missing)}; expected "
            "data_source, prompt, ability, reward_model.ground_truth."
        )
    rows = table.to_pylist()
    tasks = [_task_from_official_row(r, i, path.name) for i, r in enumerate(rows)]
    return ListTaskSource(assign_types(tasks, path.stem, task_type), name=path.name)


#: What the reference's ``process_data.py`` writes into every row it builds (its constants, not settings).
REFERENCE_DATA_SOURCE = "hotpotqa/hotpot_qa"
REFERENCE_ABILITY = "multihop_qa"


def read_records(path: str | os.PathLike) -> list[tuple[int, dict]]:
    """``(line number, object)`` for each record of a JSON Lines file, or of a ``.json`` file holding one array of
    objects (the reference's ``train.json`` / ``validation.json``; numbered from 1 by position)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"task file {str(path)!r} does not exist.")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() == ".json" and text.lstrip().startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path.name}: invalid JSON ({exc.msg}, line {exc.lineno}).") from None
        records = list(enumerate(data, 1))
    else:
        records = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append((lineno, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path.name} line {lineno}: invalid JSON ({exc.msg}).") from None
    for lineno, obj in records:
        if not isinstance(obj, dict):
            raise ValueError(f"{path.name} record {lineno}: expected a JSON object, got {type(obj).__name__}.")
    return records


def reference_answers(record: Mapping) -> list[str]:
    """The gold answers of a ``{question, golden_answers}`` record as the reference's ``process_data.py`` reads
    them: ``golden_answers`` when present (a list, each item as text; anything else: none), else ``[answer]``,
    else none. The reference keeps a record without answers (its answer term is then 0).

    >>> reference_answers({"golden_answers": ["Paris", 1]}), reference_answers({"answer": "Lyon"})
    (['Paris', '1'], ['Lyon'])
    >>> reference_answers({"golden_answers": "Paris"}), reference_answers({})
    ([], [])
    """
    if "golden_answers" in record:
        gold = record.get("golden_answers")
        return [str(a) for a in gold] if isinstance(gold, list) else []
    if "answer" in record:
        return [str(record["answer"])]
    return []


def load_jsonl(path: str | os.PathLike, *, task_type: str | None = None) -> ListTaskSource:
    """Tasks from JSON Lines (or a ``.json`` array): one object per record with ``question`` and ``answers``
    (list or string), or the reference's ``{question, golden_answers}`` records.

    Optional keys: ``instruction`` (else ours, :data:`DEFAULT_INSTRUCTION`: the reference's instruction is its prose,
    which a record of its format does not carry; :func:`convert_to_parquet` takes it), ``ability``,
    ``data_source``, ``id``. A record in the official schema (``prompt`` + ``reward_model``) is accepted too.
    Gold answers: ``answers`` must hold at least one; ``golden_answers`` are read as the reference reads them
    (:func:`reference_answers`), an empty list kept as it keeps it (the answer term is 0).
    """
    path = Path(path)
    tasks: list[Task] = []
    for lineno, obj in read_records(path):
        if "prompt" in obj and "reward_model" in obj:
            tasks.append(_task_from_official_row(obj, lineno - 1, path.name))
            continue
        if "question" not in obj or not {"answers", "answer", "golden_answers"} & set(obj):
            raise ValueError(
                f"{path.name} line {lineno}: expected keys 'question' and 'answers' (or the reference's "
                f"'golden_answers'), got {sorted(obj)}."
            )
        if "golden_answers" in obj and "answers" not in obj:
            answers = tuple(reference_answers(obj))
        else:
            answers = _answers_list(obj.get("answers", obj.get("answer")))
            if not answers:
                raise ValueError(f"{path.name} line {lineno}: 'answers' is empty; give at least one gold answer.")
        ds = obj.get("data_source", path.stem)
        tasks.append(
            Task(
                question=obj["question"],
                answers=answers,
                instruction=obj.get("instruction", DEFAULT_INSTRUCTION),
                ability=obj.get("ability", ""),
                data_source=ds,
                id=str(obj.get("id", f"{path.stem}-{lineno - 1}")),
            )
        )
    if not tasks:
        raise ValueError(f"task source {path.name!r} is empty; give at least one task.")
    return ListTaskSource(assign_types(tasks, path.stem, task_type), name=path.name)


def convert_to_parquet(src: str | os.PathLike, dst: str | os.PathLike, *, instruction: str | None = None,
                       data_source: str = REFERENCE_DATA_SOURCE, ability: str = REFERENCE_ABILITY) -> dict[str, int]:
    """Write the reference's ``{question, golden_answers}`` records (``src``: a ``.json`` array, as its
    ``train.json``, or JSON Lines) as the paper's parquet (``dst``), row by row as its ``process_data.py`` builds
    them: ``data_source``, ``prompt`` = ``[{"content": "Question: " + question + "\n" + instruction, "role":
    "user"}]``, ``ability``, ``reward_model`` = ``{"ground_truth": answers, "style": "rule"}``, answers read by
    :func:`reference_answers` (a record without answers is kept, as there).

    ``instruction``: the text after the question (None: ours, :data:`DEFAULT_INSTRUCTION`). To rebuild the
    reference's training set with its prompts, pass its ``instruction_following`` text (not shipped: see
    docs/evaluation.md). Returns ``{"rows": ..., "without_answers": ...}``.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    instruction = DEFAULT_INSTRUCTION if instruction is None else instruction
    rows, empty = [], 0
    for lineno, obj in read_records(src):
        answers = reference_answers(obj)
        empty += not answers
        question = obj.get("question", "")
        if not isinstance(question, str):
            raise ValueError(f"{Path(src).name} record {lineno}: 'question' must be a string, got "
                             f"{type(question).__name__}.")
        rows.append({"data_source": data_source,
                     "prompt": [{"content": "Question: " + question + "\n" + instruction, "role": "user"}],
                     "ability": ability, "reward_model": {"ground_truth": answers, "style": "rule"}})
    if not rows:
        raise ValueError(f"{Path(src).name} holds no records; expected {{question, golden_answers}} objects.")
    message = pa.struct([("content", pa.string()), ("role", pa.string())])
    schema = pa.schema([("data_source", pa.string()), ("prompt", pa.list_(message)), ("ability", pa.string()),
                        ("reward_model", pa.struct([("ground_truth", pa.list_(pa.string())), ("style", pa.string())]))])
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), dst)
    return {"rows": len(rows), "without_answers": empty}


# ----------------------------------------------------------------------------- datasets (``hf:``)


def _task_from_record(row: Mapping, index: int, name: str) -> Task:
    """A task from a dataset row: the official schema (``prompt`` + ``reward_model``) or ``question`` + ``answers``."""
    if "prompt" in row and "reward_model" in row:
        return _task_from_official_row(row, index, name)
    if "question" not in row or ("answers" not in row and "answer" not in row):
        raise ValueError(
            f"{name} row {index}: expected the Prompt-R1 schema (prompt, reward_model.ground_truth) or the columns "
            f"'question' and 'answers'; got columns {sorted(row)}."
        )
    answers = _answers_list(row.get("answers", row.get("answer")))
    if not answers:
        raise ValueError(f"{name} row {index}: 'answers' is empty; give at least one gold answer.")
    return Task(question=str(row["question"]), answers=answers,
                instruction=row.get("instruction") or DEFAULT_INSTRUCTION, ability=row.get("ability") or "",
                data_source=row.get("data_source") or Path(name).stem,
                id=str(row.get("id") or f"{Path(name).stem}-{index}"))


def _parse_hf_spec(args: str) -> tuple[str, str | None, str | None]:
    """``NAME_OR_FOLDER[:SPLIT]`` or ``NAME:CONFIG:SPLIT`` -> (name, config, split).

    >>> _parse_hf_spec("data/hotpot"), _parse_hf_spec("openai/gsm8k:test"), _parse_hf_spec("openai/gsm8k:main:test")
    (('data/hotpot', None, None), ('openai/gsm8k', None, 'test'), ('openai/gsm8k', 'main', 'test'))
    """
    if os.path.isdir(args):
        return args, None, None
    parts = args.split(":")
    if len(parts) == 1:
        return parts[0], None, None
    if len(parts) == 2:
        return parts[0], None, parts[1] or None
    return ":".join(parts[:-2]), parts[-2] or None, parts[-1] or None


def _pick_split(splits: Sequence[str], wanted: str | None, default: str, name: str) -> str:
    """The split to read: the one asked for, else the caller's (train / test, with validation for test), else the
    only one there is."""
    if wanted is not None:
        if wanted not in splits:
            raise ValueError(f"dataset {name!r} has no split {wanted!r}; it has {sorted(splits)}. Write "
                             f"'hf:{name}:SPLIT' with one of them.")
        return wanted
    for candidate in (default, *(("validation", "valid", "dev") if default == "test" else ())):
        if candidate in splits:
            return candidate
    if len(splits) == 1:
        return next(iter(splits))
    raise ValueError(f"dataset {name!r} has splits {sorted(splits)} and none is {default!r}; choose one with "
                     f"'hf:{name}:SPLIT'.")


def _offline_first(load: Callable[[], Any], name: str) -> Any:
    """Run ``load`` from the local cache only (as with ``HF_DATASETS_OFFLINE=1``); when the dataset is not cached
    and offline mode was not asked for, try the hub once."""
    import datasets

    try:
        import huggingface_hub.constants as hub_constants
    except ImportError:  # pragma: no cover - datasets depends on huggingface_hub
        hub_constants = None
    asked_offline = bool(datasets.config.HF_HUB_OFFLINE)
    saved = (datasets.config.HF_HUB_OFFLINE, getattr(hub_constants, "HF_HUB_OFFLINE", None))
    datasets.config.HF_HUB_OFFLINE = True
    if hub_constants is not None:
        hub_constants.HF_HUB_OFFLINE = True
    try:
        return load()
    except Exception as offline_exc:  # noqa: BLE001 - not in the cache (the exception types vary by version)
        first = offline_exc
    finally:
        datasets.config.HF_HUB_OFFLINE = saved[0]
        if hub_constants is not None:
            hub_constants.HF_HUB_OFFLINE = saved[1]
    if asked_offline:
        raise FileNotFoundError(f"dataset {name!r} is not in the local datasets cache and offline mode is on "
                                f"(HF_DATASETS_OFFLINE / HF_HUB_OFFLINE): {first}") from None
    try:
        return load()
    except Exception as online_exc:  # noqa: BLE001
        raise FileNotFoundError(
            f"cannot load dataset {name!r}: not in the local cache ({type(first).__name__}: {first}) and not from the "
            f"hub ({type(online_exc).__name__}: {online_exc}). Give a local folder (saved with save_to_disk, or "
            "holding parquet files), or download the dataset where the hub is reachable."
        ) from None


def load_hf_tasks(args: str, *, split: str = "train", seed: int = 0, task_type: str | None = None) -> ListTaskSource:
    """The ``hf`` task source: ``hf:NAME_OR_FOLDER[:SPLIT]`` (or ``hf:NAME:CONFIG:SPLIT``) through the ``datasets``
    library.

    ``NAME_OR_FOLDER`` is a folder written by ``Dataset.save_to_disk`` / ``DatasetDict.save_to_disk``, a folder of
    parquet (or JSON Lines) files (``train*.parquet``, ``test*.parquet``, ... name the splits; otherwise all rows
    are one split), or a dataset name on the hub, read from the local cache first (as with
    ``HF_DATASETS_OFFLINE=1``; the hub is asked only when it is not cached and offline mode is off). Rows are in
    the Prompt-R1 schema (``data_source``, ``prompt``, ``ability``, ``reward_model.ground_truth``) or have
    ``question`` and ``answers``. Without ``SPLIT`` the caller's split is read (``train`` for training, ``test``
    then ``validation`` for evaluation), or the only split there is. ``seed`` is unused (the rows keep their order).
    """
    del seed
    if not args:
        raise ValueError("the hf task source needs a dataset: write 'hf:NAME_OR_FOLDER[:SPLIT]', e.g. "
                         "'hf:data/hotpot_ds' or 'hf:openai/gsm8k:main:test'.")
    try:
        import datasets
    except ImportError:
        raise ImportError("the hf task source needs the datasets library: pip install datasets") from None
    name, config, wanted = _parse_hf_spec(args)
    folder = Path(name)
    if folder.is_dir() and ((folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file()):
        loaded = datasets.load_from_disk(str(folder))
    elif folder.is_dir():
        files = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".parquet", ".jsonl", ".json"))
        if not files:
            raise FileNotFoundError(f"dataset folder {name!r} holds no save_to_disk dataset and no .parquet or "
                                    ".jsonl files.")
        loaded = datasets.load_dataset(str(folder))
    elif name.startswith((".", "/", "~")) or (os.sep in name and Path(name.split(os.sep)[0]).is_dir()):
        raise FileNotFoundError(f"dataset folder {name!r} does not exist.")
    else:
        loaded = _offline_first(lambda: datasets.load_dataset(name, config), name)
    if isinstance(loaded, datasets.DatasetDict):
        chosen = _pick_split(list(loaded), wanted, split, name)
        rows, label = loaded[chosen], f"{folder.name or name}:{chosen}"
    else:
        if wanted is not None and wanted != getattr(loaded, "split", wanted):
            raise ValueError(f"dataset {name!r} is a single split; drop ':{wanted}'.")
        rows, label = loaded, folder.name or name
    stem = folder.name or name.replace("/", "_")
    tasks = [_task_from_record(row, i, stem) for i, row in enumerate(rows)]
    if not tasks:
        raise ValueError(f"task source 'hf:{args}' is empty; give at least one task.")
    return ListTaskSource(assign_types(tasks, stem, task_type), name=f"hf:{label}")


#: Named task sources: ``load_tasks("NAME[:ARGS]")`` calls ``TASK_SOURCES["NAME"](ARGS, split=, seed=)``.
#: File paths (``.parquet``, ``.jsonl``) are recognised by their suffix instead.
TASK_SOURCES: Registry[Callable[..., Sequence[Task]]] = Registry(
    "task source", {"synthetic": "promptr1.envs.synthetic.world:load_synthetic", "geo": "promptr1.envs.geography:load_geo",
     "hf": load_hf_tasks}
)


def check_task_specs(spec: Any, *, what: str = "--tasks") -> None:
    """Check a ``task=`` argument without reading it (cheap: a command calls this before any model loads):
    every file it names exists and has a suffix :func:`load_tasks` reads, every ``NAME:...`` names a source.

    >>> check_task_specs(["synthetic", "synthetic:test"])
    >>> check_task_specs("/nope.parquet")
    Traceback (most recent call last):
    ...
    FileNotFoundError: --tasks: task file '/nope.parquet' does not exist; give a .parquet or .jsonl path, ...
    """
    if isinstance(spec, (str, os.PathLike)):
        specs: list[Any] = [spec]
    elif isinstance(spec, Iterable) and not isinstance(spec, Task):
        specs = list(spec)
    else:
        return
    for one in specs:
        if not isinstance(one, (str, os.PathLike)):
            continue
        text = os.fspath(one)
        scheme = text.partition(":")[0]
        if scheme in TASK_SOURCES and not Path(text).suffix:
            continue
        suffix = Path(text).suffix.lower()
        if suffix not in (".parquet", ".jsonl", ".json", ".ndjson"):
            sources = ", ".join(f"'{n}:...'" for n in TASK_SOURCES.names())
            raise ValueError(f"{what}: cannot load tasks from {text!r}: expected 'synthetic', a source "
                             f"({sources}), a .parquet file in the Prompt-R1 schema, or a .jsonl file with "
                             "'question'/'answers'.")
        if not Path(text).expanduser().is_file():
            raise FileNotFoundError(f"{what}: task file {text!r} does not exist; give a .parquet or .jsonl "
                                    "path, or 'synthetic'.")


def load_tasks(spec, *, split: str = "train", seed: int = 0, task_type: str | None = None) -> Sequence[Task]:
    """Resolve a ``task=`` argument into an indexable collection of tasks.

    Accepts a :class:`Task`, a sequence of tasks, ``"synthetic"`` / ``"synthetic:train"`` /
    ``"synthetic:test"`` (optionally ``"synthetic:test:multihop"``), a ``.parquet`` or ``.jsonl``
    path, or a list of those (concatenated). ``task_type`` sets the type of every task of a file
    (otherwise it is inferred, see :func:`assign_types`).
    """
    if isinstance(spec, Task):
        return ListTaskSource([spec], name=spec.id or "task")
    if isinstance(spec, (str, os.PathLike)):
        text = os.fspath(spec)
        scheme, _, rest = text.partition(":")
        if scheme in TASK_SOURCES and not Path(text).suffix:
            return TASK_SOURCES.get(scheme)(rest, split=split, seed=seed)
        suffix = Path(text).suffix.lower()
        if suffix == ".parquet":
            return load_parquet(text, task_type=task_type)
        if suffix in (".jsonl", ".json", ".ndjson"):
            return load_jsonl(text, task_type=task_type)
        raise ValueError(
            f"cannot load tasks from {text!r}: expected 'synthetic[:train|:test]', a .parquet file in the "
            "Prompt-R1 schema, or a .jsonl file with 'question'/'answers'."
        )
    if isinstance(spec, Sequence) and len(spec) > 0 and all(isinstance(t, Task) for t in spec):
        return spec if hasattr(spec, "__getitem__") else ListTaskSource(list(spec))
    if isinstance(spec, Iterable):
        parts = list(spec)
        if len(parts) == 1:
            return load_tasks(parts[0], split=split, seed=seed, task_type=task_type)
        merged: list[Task] = []
        for part in parts:
            merged.extend(load_tasks(part, split=split, seed=seed, task_type=task_type))
        return ListTaskSource(merged, name="+".join(str(p) for p in parts))
    raise TypeError(f"task must be a Task, a list of tasks, 'synthetic', or a file path; got {type(spec).__name__}.")
