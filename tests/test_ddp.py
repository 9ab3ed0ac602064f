"""Two CPU processes under `accelerate launch`: each rank rolls out its share; weights stay identical.

Accelerate's `--cpu` launcher needs MPI for more than one process (without it, it silently starts one), so
the test launches with torch's own launcher (`--multi_gpu`, gloo backend) and our `cpu=True` option.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

pytest.importorskip("accelerate")

WORKER = textwrap.dedent('''
    import hashlib, sys
    import torch
    from promptr1.agents.config import GRPOConfig
    from promptr1.agents.trainer import GRPOTrainer
    from promptr1.envs.tasks import Task
    from promptr1.testing.tiny_model import tiny_model_path

    class Env:
        def reset(self, seed=None, options=None):
            self.task, self.t = options["task"], 0
            return "", {"messages": [{"role": "user", "content": self.task.prompt}]}
        def step(self, action):
            self.t += 1
            if self.t >= 2:
                r = (len(action) % 5) / 2.0 - 1.0
                return "", r, False, True, {"env_error": None, "reward_components": {"total": r}}
            return "<interaction_response>ok</interaction_response>", 0.0, False, False, {"env_error": None}

    out = sys.argv[1]
    tasks = [Task(question=f"q{i}?", answers=("a",), id=str(i)) for i in range(8)]
    cfg = GRPOConfig(model=str(tiny_model_path()), steps=1, batch_questions=2, group_size=2, max_new_tokens=6,
                     max_seq_len=512, max_turns=2, lr=1e-3, progress=False, output_dir=out, cpu=True,
                     num_transcripts=0, kl_coef=0.0)
    tr = GRPOTrainer(cfg, tasks=tasks, env_factory=Env)
    before = {k: v.clone() for k, v in tr.unwrapped_model.state_dict().items()}
    qs = [t.id for t in tr.tasks]
    tr.train()
    sd = tr.unwrapped_model.state_dict()
    h = hashlib.sha256(b"".join(v.detach().cpu().numpy().tobytes() for v in sd.values())).hexdigest()
    moved = any(not torch.equal(before[k], sd[k]) for k in sd)
    rank = tr.accelerator.process_index
    with open(f"{out}/rank{rank}.txt", "w") as fh:
        fh.write(f"{h} {int(moved)} {tr.accelerator.num_processes}\\n")
''')


@pytest.mark.slow
def test_two_cpu_processes_keep_identical_weights(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--multi_gpu",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", str(script), str(tmp_path)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [(tmp_path / f"rank{r}.txt").read_text().split() for r in range(2)]
    assert lines[0][2] == lines[1][2] == "2"  # two processes
    assert lines[0][1] == lines[1][1] == "1"  # the step moved the weights
    assert lines[0][0] == lines[1][0]  # identical on both ranks
    assert (tmp_path / "latest").is_file()
