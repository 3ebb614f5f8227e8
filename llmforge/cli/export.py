"""`llmforge export merge|gguf|lora-gguf`: flags -> config -> one export verb -> print."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from llmforge.cli.options import ConfigOption, DryRunOption, ForceOption, JsonOption, SetOption, load, workspace_of
from llmforge.cli.output import console, escape, print_json, print_table, warn

app = typer.Typer(
    help="Merge adapters, convert to GGUF with our own converter, quantize, and verify against the HF model.\n\n"
    "Example:  llmforge export gguf --quant f16,q4_k_m",
    no_args_is_help=True,
)

QuantOption = Annotated[
    Optional[str],
    typer.Option("--quant", "-q", help="Comma-separated GGUF types: f16, bf16, f32, q8_0, q6_k, q5_k_m, q5_0, q4_k_m, "
                 "q4_0, q3_k_m, q2_k (default: export.quant).", show_default=False),
]
DtypeOption = Annotated[
    str, typer.Option("--dtype", help="Dtype of the merged weights: auto (the base's), float32, bfloat16, float16.")
]
NoVerifyOption = Annotated[bool, typer.Option("--no-verify", help="Skip loading each GGUF in llama.cpp and comparing.")]


@app.command("merge")
def merge(
    runs: Annotated[Optional[list[str]], typer.Argument(
        help="Runs (or adapter folders) whose adapters are merged in this order; default: the latest run.",
        show_default=False)] = None,
    dtype: DtypeOption = "auto",
    config: ConfigOption = None,
    set_: SetOption = None,
    force: ForceOption = False,
    json_: JsonOption = False,
) -> None:
    """Merge LoRA / QLoRA / DPO adapters into the full-precision base (export/<run>/merged/).

    The result is a plain safetensors model with the tokenizer and chat template the adapter was trained with.

    Example:  llmforge export merge sft-run dpo-run --dtype bfloat16
    """
    from llmforge.export import merge as merge_verb

    loaded = load(config, set_)
    cfg = loaded.config
    result = merge_verb(cfg.model, cfg.export, workspace_of(loaded), runs or None, dtype=dtype, force=force,
                        progress=_phase_line("export merge", json_))
    if json_:
        print_json(result.as_dict())
        return
    console.print(f"merged {len(result.adapters)} adapter(s) into {result.base_model} -> {result.output} "
                  f"({result.dtype}; merged vs adapter logits max diff {result.merge_max_abs_diff:.2e})")
    _print_cleanup(result.removed_temporaries, [])


@app.command("gguf")
def gguf(
    source: Annotated[Optional[str], typer.Argument(
        help="A run name, run folder, adapter folder or HF model folder; default: the latest run.",
        show_default=False)] = None,
    quant: QuantOption = None,
    name: Annotated[Optional[str], typer.Option("--name", help="File name stem (default: the run name).")] = None,
    dtype: DtypeOption = "auto",
    no_verify: NoVerifyOption = False,
    config: ConfigOption = None,
    set_: SetOption = None,
    force: ForceOption = False,
    dry_run: DryRunOption = False,
    json_: JsonOption = False,
) -> None:
    """Convert to GGUF, quantize, and verify each file against HF (tokenization and next-token logits).

    Adapter runs are merged first. Files land in export/<run>/<name>-<quant>.gguf beside a manifest.json.

    Architectures our converter does not cover go to llama.cpp's own converter (export.converter: llama.cpp fetches
    it once; auto uses it when cached); the first line says which converter runs, from where.

    A failed verification exits 1 and leaves the files marked verified: false.

    Example:  llmforge export gguf my-run --quant f16,q8_0,q4_k_m
    """
    from llmforge import export

    flags = {}
    if quant is not None:
        flags["export__quant"] = quant
    if no_verify:
        flags["export__verify"] = False
    loaded = load(config, set_, **flags)
    cfg = loaded.config
    plan = export.plan(cfg.model, cfg.export, workspace_of(loaded), source, name=name, dtype=dtype, force=force)
    if dry_run:
        if json_:
            print_json(plan.as_dict())
            return
        console.print(escape(plan.converter_note))
        merge = "merge the adapter, then " if plan.merge_first else ""
        console.print(f"would {merge}write {', '.join(plan.files)} in {escape(plan.output_dir)}"
                      f"{' and verify each' if plan.verify else ''}")
        return
    result = export.run(plan, progress=_phase_line("export gguf", json_))
    if json_:
        print_json(result.as_dict())
        return
    console.print(escape(result.converter_note))
    _print_files(result.run, result.files, result.output_dir)
    _print_cleanup(result.removed_temporaries, result.replaced_leftovers)


def _phase_line(command: str, json_: bool):
    """A line per export phase (merge, each file, verification), which can take minutes on a real model."""
    if json_:
        return None
    return lambda phase: console.print(f"{command}: {escape(phase)}")


def _print_files(run: str | None, files: list[dict], output_dir: str) -> None:
    """A table of the files written (a manifest's file or adapter entries: quant, bytes, verified, logits, ...)."""
    from rich.table import Table

    table = Table(title=f"GGUF export of {run}")
    for col in ("quant", "size", "verified", "tokens", "top-1", "max |diff|", "mean |diff|"):
        table.add_column(col, no_wrap=col == "quant")
    for f in files:
        logits = f.get("logits") or {}
        tok = f.get("tokenization") or {}
        table.add_row(
            f["quant"], f"{f['bytes'] / 2**20:.1f} MiB", "[green]yes[/]" if f["verified"] else "[red]no[/]",
            "ok" if tok.get("ok") else ("DIFFERS" if tok else "-"),
            f"{logits['top1_agreement']:.3f}" if logits else "-",
            f"{logits['max_abs_diff']:.4f}" if logits else "-",
            f"{logits['mean_abs_diff']:.5f}" if logits else "-",
        )
    print_table(table)
    if any("not installed" in str(f.get("verification", "")) for f in files):
        warn("not verified: llama-cpp-python is not installed (pip install 'llmforge-cli[llamacpp]')")
    console.print(f"files: {', '.join(f['path'] for f in files)}")
    console.print(f"in: {output_dir}  (manifest.json beside them)")


def _print_cleanup(removed_temporaries: int, replaced_leftovers: list[str]) -> None:
    """What this run tidied after an export that was killed mid-way."""
    if removed_temporaries:
        console.print(f"removed {removed_temporaries} temporary file(s) left by an interrupted export")
    if replaced_leftovers:
        console.print(f"replaced {len(replaced_leftovers)} GGUF file(s) no manifest listed (left by an "
                      f"interrupted export): {escape(', '.join(replaced_leftovers))}")


@app.command("lora-gguf")
def lora_gguf(
    source: Annotated[Optional[str], typer.Argument(
        help="A LoRA run name or adapter folder; default: the latest run.", show_default=False)] = None,
    base_gguf: Annotated[Optional[Path], typer.Option(
        "--base-gguf", help="Base model GGUF to verify the adapter against (default: convert the base to f16).",
        show_default=False)] = None,
    no_verify: NoVerifyOption = False,
    config: ConfigOption = None,
    set_: SetOption = None,
    force: ForceOption = False,
    json_: JsonOption = False,
) -> None:
    """Write the adapter alone as a GGUF LoRA adapter (for Ollama's ADAPTER and llama.cpp's --lora).

    It is verified by loading base + adapter in llama.cpp and comparing logits with HF base + adapter.

    Example:  llmforge export lora-gguf my-lora-run
    """
    from llmforge.export import export_lora_gguf

    loaded = load(config, set_, **({"export__verify": False} if no_verify else {}))
    cfg = loaded.config
    result = export_lora_gguf(cfg.model, cfg.export, workspace_of(loaded), source, base_gguf=base_gguf, force=force,
                              progress=_phase_line("export lora-gguf", json_))
    if json_:
        print_json(result.as_dict())
        return
    _print_files(result.run, result.lora_adapters, result.output_dir)
    _print_cleanup(result.removed_temporaries, result.replaced_leftovers)
