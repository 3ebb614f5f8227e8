"""`--nproc N`: run the same `llmforge train` again under torchrun (or `accelerate launch` with a config file for
FSDP/DeepSpeed), every process with the same run name so they share one run folder."""

from __future__ import annotations

import os
import subprocess
import sys


def command(argv: list[str], nproc: int, run_name: str | None, accelerate_config: str | None = None) -> list[str]:
    args = list(argv)
    if run_name is not None:
        # fixed here, once, so the processes need not agree on a timestamp (typed flags beat --set, so it sticks)
        args += ["--set", f"train.run_name={run_name}"]
    if accelerate_config:
        launcher = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", accelerate_config,
                    "--num_processes", str(nproc), "-m", "llmforge", "train"]
    else:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                    "-m", "llmforge", "train"]
    return launcher + args


def relaunch(argv: list[str], nproc: int, run_name: str | None, accelerate_config: str | None = None) -> int:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    return subprocess.call(command(argv, nproc, run_name, accelerate_config), env=env)
