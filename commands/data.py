"""``promptr1 data``: task files. ``promptr1 data convert IN OUT`` writes the reference's ``{question,
golden_answers}`` records (its ``train.json`` / ``validation.json``, or JSON Lines) as the paper's parquet, row by
row as its ``process_data.py`` builds them (:func:`promptr1.envs.tasks.convert_to_parquet`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from promptr1.envs.tasks import REFERENCE_ABILITY, REFERENCE_DATA_SOURCE

__all__ = ["data_main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="promptr1 data", description="Task files.")
    sub = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    c = sub.add_parser("convert", help="write {question, golden_answers} records as the paper's parquet",
                       description="Write {question, golden_answers} records (a .json array or JSON Lines) as the "
                                   "paper's parquet schema (data_source, prompt, ability, reward_model), as the "
                                   "reference's process_data.py does.")
    c.add_argument("src", metavar="IN", help="records: a .json file holding an array, or .jsonl")
    c.add_argument("dst", metavar="OUT", help="the parquet file to write")
    c.add_argument("--instruction", default=None,
                   help="the text after 'Question: q\\n', or @FILE (default: ours; for the reference's training set "
                        "pass its instruction_following text, see docs/evaluation.md)")
    c.add_argument("--data-source", default=REFERENCE_DATA_SOURCE,
                   help=f"every row's data_source (default: the reference's, {REFERENCE_DATA_SOURCE})")
    c.add_argument("--ability", default=REFERENCE_ABILITY,
                   help=f"every row's ability (default: the reference's, {REFERENCE_ABILITY})")
    return p


def data_main(argv: Sequence[str] | None = None) -> int:
    """``promptr1 data ACTION ...``; returns the exit code (2 for bad input, with a one-line reason)."""
    from promptr1.envs.tasks import convert_to_parquet

    from promptr1.core.settings import ConfigError, text_or_file

    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    try:
        instruction = None if args.instruction is None else text_or_file("instruction", args.instruction)
        stats = convert_to_parquet(args.src, args.dst, instruction=instruction, data_source=args.data_source,
                                   ability=args.ability)
    except (OSError, ValueError, ConfigError) as exc:
        print(f"promptr1 data convert: {exc}", file=sys.stderr)
        return 2
    which = "ours (pass --instruction for another)" if instruction is None else "the one given"
    print(f"wrote {stats['rows']} rows to {args.dst} (instruction: {which}; {stats['without_answers']} rows without "
          f"a gold answer, kept as the reference keeps them)")
    return 0
