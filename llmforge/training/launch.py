"""`--nproc N`: run the same `llmforge train` again under torchrun (or `accelerate launch` with a config file for
FSDP/DeepSpeed), every process with the same run name so they share one run folder."""

from __future__ import annotations

import os
import signal
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
    """Run the launcher and wait; its exit code is ours. A Ctrl-C reaches the launcher and the workers through the
    terminal's process group, so this process ignores SIGINT (the workers save a checkpoint and stop) and passes a
    SIGTERM sent to it alone on to the launcher."""
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", "1")
    proc = subprocess.Popen(command(argv, nproc, run_name, accelerate_config), env=env)
    received: list[int] = []

    def forward(signum, frame):
        received.append(signum)
        proc.send_signal(signum)

    previous = {
        signal.SIGINT: signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum)),
        signal.SIGTERM: signal.signal(signal.SIGTERM, forward),
    }
    try:
        code = proc.wait()
        if received:  # the launcher reports its own signal as a failure (1); say what really happened
            return 128 + received[0]
        return 128 - code if code < 0 else code  # killed by a signal: the shell's convention
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
