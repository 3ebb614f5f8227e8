"""`llmforge doctor`: what this machine can do, and why not where it can't."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmforge.cli.options import ConfigOption, JsonOption, SetOption, load, workspace_of
from llmforge.cli.output import console, escape, print_json, print_table


def doctor(
    config: ConfigOption = None,
    set_: SetOption = None,
    ollama_host: Annotated[
        Optional[str], typer.Option("--ollama-host", help="Ollama address (default $OLLAMA_HOST or 127.0.0.1:11434).")
    ] = None,
    json_: JsonOption = False,
) -> None:
    """Check Python, torch device, optional libraries, 4-bit support, llama.cpp and Ollama; verdict per method.

    Example:  llmforge doctor --json
    """
    from llmforge.doctor import diagnose

    loaded = load(config, set_)
    host = ollama_host or loaded.config.deploy.host
    llama_cpp_dir = loaded.config.export.llama_cpp_dir
    report = diagnose(workspace_of(loaded).root, ollama_host=host,
                      llama_cpp_dir=Path(llama_cpp_dir) if llama_cpp_dir else None)
    if json_:
        print_json(report.to_dict())
        return
    from rich.table import Table

    s = report.system
    console.print(
        f"[bold]llmforge doctor[/]  Python {s['python']} on {s['os']} ({s['machine']}), {s['cpus']} CPUs, "
        f"{s['memory_gb']} GiB RAM, {s['disk_free_gb']} GiB free at {s['workspace']}"
    )
    t = report.torch
    if t.get("version"):
        gpu = (
            f"CUDA {t.get('cuda_version')}: {t.get('gpu')} ({t.get('gpu_memory_gb')} GiB), bf16 {t.get('bf16')}"
            if t.get("cuda")
            else "no CUDA device" + (", MPS available" if t.get("mps") else "")
        )
        console.print(f"torch {t['version']}: {gpu}")
    elif t.get("error"):
        console.print(f"[red]torch does not import:[/] {escape(t['error'])}")
    libs = ", ".join(f"{k} {v}" for k, v in report.libraries.items() if v)
    missing = ", ".join(k for k, v in report.libraries.items() if not v)
    console.print(f"installed: {libs or 'none of the optional libraries'}")
    if missing:
        console.print(f"[dim]not installed: {missing}[/]")
    table = Table(show_header=True, header_style="bold")
    table.add_column("capability")
    table.add_column("status")
    table.add_column("why")
    for v in report.verdicts:
        table.add_row(
            escape(v.name), "[green]available[/]" if v.available else "[red]not available[/]", escape(v.detail)
        )
    print_table(table)
