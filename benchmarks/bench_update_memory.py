"""Peak memory of one GRPO update micro-batch (forward, backward, AdamW step), entropy logged with or without autograd.

The trainer logs the policy's entropy every step; with ``entropy_coef`` 0 (the default, and the quickstart's) it is
never differentiated. Computed under autograd anyway (the branch point's code path), its softmax buffers (two to three
times the logits' size, ``B x T x V`` float32) stay alive until the backward pass; computed under ``no_grad`` they are
freed at once. Each row is a fresh process (its peak resident set size, ``ru_maxrss``, read at the end), the two
modes alternating, so that the numbers compare like with like on a loaded machine.

    python benchmarks/bench_update_memory.py                       # SmolLM2-135M, 4 x 700 tokens (the quickstart's
                                                                   # micro-batch), 2 runs of each mode
    python benchmarks/bench_update_memory.py --model tiny --repeats 3
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys


def one_run(model_name: str, batch: int, seq: int, entropy_grad: bool) -> dict:
    import resource
    import time

    import torch

    from promptr1.agents.models import load_policy, sequence_logprobs

    torch.manual_seed(0)
    model, _ = load_policy(model_name, dtype=torch.float32)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-6)
    rss_loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    attn = torch.ones_like(ids)
    act = torch.zeros_like(ids)
    act[:, seq // 4:] = 1  # the agent's tokens: all but the prompt
    t0 = time.perf_counter()
    logp, ent = sequence_logprobs(model, ids, attn, act, with_entropy=True, entropy_grad=entropy_grad)
    loss = -(logp * act).sum() / act.sum()
    loss.backward()
    opt.step()
    return {"entropy_grad": entropy_grad, "rss_loaded_mb": rss_loaded,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "entropy": float((ent * act).sum() / act.sum()), "update_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=700)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--one", choices=("grad", "nograd"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print(json.dumps(one_run(args.model, args.batch, args.seq, args.one == "grad")))
        return
    rows: dict[bool, list[dict]] = {True: [], False: []}
    for _ in range(args.repeats):
        for grad in (True, False):
            cmd = [sys.executable, __file__, "--model", args.model, "--batch", str(args.batch), "--seq", str(args.seq),
                   "--one", "grad" if grad else "nograd"]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
            rows[grad].append(json.loads(out))
    print(f"one update micro-batch of {args.model}, {args.batch} x {args.seq} tokens, {args.repeats} runs each "
          "(median [min-max])\n")
    print(f"{'entropy computed':<34}{'peak RSS MB':>24}{'above loaded model MB':>26}{'entropy':>10}")
    for grad, label in ((True, "with autograd (branch point)"), (False, "without autograd (now)")):
        peaks = [r["peak_rss_mb"] for r in rows[grad]]
        extra = [r["peak_rss_mb"] - r["rss_loaded_mb"] for r in rows[grad]]
        print(f"{label:<34}{statistics.median(peaks):>10.0f} [{min(peaks):.0f}-{max(peaks):.0f}]"
              f"{statistics.median(extra):>14.0f} [{min(extra):.0f}-{max(extra):.0f}]"
              f"{rows[grad][0]['entropy']:>10.4f}")


if __name__ == "__main__":
    main()
