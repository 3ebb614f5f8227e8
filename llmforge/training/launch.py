"""`--nproc N`: run the same `llmforge train` again under torchrun (or `accelerate launch` with a config file for
FSDP/DeepSpeed), every process with the same run name so they share one run folder."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from llmforge.errors import InputError, UsageError

# Set on the relaunched processes: how many `--nproc` asked for, so each can tell when the launcher started fewer.
NPROC_ENV = "LLMFORGE_NPROC"


def check_world(world: int) -> None:
    """Refuse a relaunched process whose launcher started another number of processes than --nproc asked for:
    `accelerate launch` on CPU starts one process, whatever the config says, unless it goes through mpirun."""
    asked = os.environ.get(NPROC_ENV)
    if asked and asked.isdigit() and int(asked) != world:
        raise UsageError(
            f"--nproc {asked}: the launcher started {world} process(es), not {asked}",
            hint="accelerate runs a single process on CPU (MULTI_CPU needs mpirun); without train.accelerate_config "
            "--nproc uses torchrun, which starts them all",
        )


def check_accelerate_config(path: str, nproc: int) -> None:
    """Refuse, before launching, an accelerate config under which `accelerate launch` starts a single process
    (it uses its one-process launcher for `distributed_type` NO or MULTI_CPU without mpirun, and for `use_cpu`)."""
    import yaml

    config_file = Path(path).expanduser()
    try:
        data = yaml.safe_load(config_file.read_text(encoding="utf-8"))
    except OSError as exc:
        raise InputError(f"train.accelerate_config: cannot read {config_file} ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise InputError(f"train.accelerate_config: {config_file} is not YAML ({exc})") from None
    if not isinstance(data, dict):
        raise InputError(f"train.accelerate_config: {config_file} is not an accelerate config (a mapping)")
    kind = str(data.get("distributed_type", "NO")).upper()
    mpirun = (data.get("mpirun_config") or {}).get("mpirun_hostfile")
    single = kind == "NO" or data.get("use_cpu") is True or (kind == "MULTI_CPU" and not mpirun)
    if single:
        raise UsageError(
            f"--nproc {nproc}: accelerate would start one process with {config_file} "
            f"(distributed_type {kind}{', use_cpu' if data.get('use_cpu') is True else ''})",
            hint="on CPU, leave train.accelerate_config unset (--nproc uses torchrun); on GPUs, use distributed_type "
            "MULTI_GPU, FSDP or DEEPSPEED",
        )


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
    env[NPROC_ENV] = str(nproc)
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
