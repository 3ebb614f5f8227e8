"""Which model to serve and with which engine: a GGUF for llama.cpp, or an HF folder / run for transformers."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from llmforge.errors import UsageError
from llmforge.workspace import Workspace, name_problem

# When an export holds several quantizations, serve the first of these that exists.
QUANT_PREFERENCE = ("q8_0", "q4_k_m", "q5_k_m", "q6_k", "f16", "bf16", "q4_0")


@dataclass(frozen=True)
class Target:
    engine: str  # "llamacpp" | "transformers" | "vllm"
    path: Path  # the GGUF file, or the HF model / adapter folder
    name: str  # the model id shown in /v1/models
    base_model: str | None = None  # for an adapter: the model it was trained on
    tokenizer: Path | None = None  # where the run saved its tokenizer (default: beside the weights, else the base)


def resolve(model_name: str | None, model_spec: str | None, engine: str, workspace: Workspace) -> Target:
    """`model_spec` is serve.model (a path, run or export name, or None); `model_name` is model.name."""
    if engine not in ("auto", "llamacpp", "transformers", "vllm"):
        raise UsageError(f"serve.engine: unknown engine {engine!r}", hint="use auto, llamacpp, transformers or vllm")
    if engine == "vllm":  # vLLM serves what transformers would; vllm_engine.choose makes the switch
        engine = "transformers"
    if model_spec:
        return _resolve_spec(model_spec, engine, workspace)
    if engine in ("auto", "llamacpp") and workspace.exports():
        export = workspace.latest_export()
        return Target("llamacpp", pick_gguf(workspace.export_dir(export)), export)
    if engine == "llamacpp":
        raise UsageError(
            f"no GGUF export in {workspace.export_root} to serve with llama.cpp",
            hint="export one (llmforge export gguf) or pass --model FILE.gguf",
        )
    if workspace.runs():
        run = workspace.latest_run()
        return _run_target(workspace, run)
    if model_name:
        return _folder_target(model_name, engine)
    raise UsageError(
        "nothing to serve: no export, no finished run, and no model.name",
        hint="pass --model PATH (a .gguf file or a Hugging Face model folder)",
    )


def _resolve_spec(spec: str, engine: str, workspace: Workspace) -> Target:
    path = Path(spec).expanduser()
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise UsageError(f"{path}: not a .gguf file", hint="pass a GGUF file or a Hugging Face model folder")
        if engine == "transformers":
            raise UsageError(f"{path}: a GGUF file is served by llama.cpp", hint="use --engine llamacpp or auto")
        return Target("llamacpp", path, path.stem)
    if path.is_dir():
        if engine == "llamacpp" or (engine == "auto" and not _is_hf_folder(path) and list(path.glob("*.gguf"))):
            return Target("llamacpp", pick_gguf(path), path.name)
        return _folder_target(str(path), engine)
    # a run or export of this workspace, by name; a spec that cannot be a name (a hub id, '../x') is never joined
    # to the workspace's folders
    by_name = name_problem(spec) is None
    if by_name and workspace.export_manifest(spec).exists() and engine in ("auto", "llamacpp"):
        return Target("llamacpp", pick_gguf(workspace.export_dir(spec)), spec)
    if by_name and workspace.run_manifest(spec).exists():
        return _run_target(workspace, spec)
    if engine == "llamacpp":
        raise UsageError(f"serve.model: {spec!r} is neither a GGUF file nor an export", hint="pass a .gguf path")
    # a hub id: transformers will find it in the local cache (or fail with its own message)
    if "/" in spec and not spec.startswith((".", "/")):
        return Target("transformers", Path(spec), spec)
    raise UsageError(
        f"serve.model: {spec!r} is not a file, a folder, a run or an export",
        hint=f"runs: {', '.join(workspace.runs()) or 'none'}; exports: {', '.join(workspace.exports()) or 'none'}",
    )


def _is_hf_folder(path: Path) -> bool:
    return (path / "config.json").exists() or (path / "adapter_config.json").exists()


def _folder_target(spec: str, engine: str) -> Target:
    path = Path(spec).expanduser()
    if engine == "llamacpp":
        raise UsageError(f"{spec}: llama.cpp serves GGUF files", hint="export it first: llmforge export gguf")
    if (path / "adapter_config.json").exists():
        config = json.loads((path / "adapter_config.json").read_text())
        base = config.get("base_model_name_or_path")
        if not base:
            raise UsageError(f"{path}/adapter_config.json: base_model_name_or_path: missing")
        return Target("transformers", path, path.name, base_model=base)
    if path.is_dir() and not (path / "config.json").exists():
        raise UsageError(f"{path}: no config.json (not a Hugging Face model folder)")
    return Target("transformers", path, path.name if path.is_dir() else spec)


def _run_target(workspace: Workspace, run: str) -> Target:
    from llmforge.checkpoints import read_run

    parts = read_run(workspace.run_dir(run))
    model_dir = parts.get("model") or workspace.model_dir(run)
    adapter_dir = parts.get("adapter") or workspace.adapter_dir(run)
    tokenizer = parts.get("tokenizer")
    if (Path(model_dir) / "config.json").exists():
        return Target("transformers", Path(model_dir), run, tokenizer=tokenizer)
    if (Path(adapter_dir) / "adapter_config.json").exists():
        base = parts.get("base_model")
        if not base:
            config = json.loads((Path(adapter_dir) / "adapter_config.json").read_text())
            base = config.get("base_model_name_or_path")
        if not base:
            raise UsageError(f"{workspace.run_manifest(run)}: base_model: missing; cannot load the adapter")
        return Target("transformers", Path(adapter_dir), run, base_model=base, tokenizer=tokenizer)
    raise UsageError(f"run {run!r} has neither {model_dir} nor {adapter_dir}")


def pick_gguf(folder: Path) -> Path:
    files = sorted(folder.glob("*.gguf"))
    if not files:
        raise UsageError(f"{folder}: no .gguf file", hint="export one: llmforge export gguf")
    for quant in QUANT_PREFERENCE:
        for f in files:
            if f.stem.lower().endswith("-" + quant):
                return f
    return files[0]


@dataclass(frozen=True)
class Variant:
    """One arm of the A/B test, its model resolved to the name it is served under."""

    name: str
    model: str  # a Target.name
    weight: float


def resolve_lineup(model_name: str | None, serve, workspace: Workspace) -> tuple[list[Target], list[Variant]]:
    """Every model this server will serve (serve.model, serve.models, the variants' models) and the variants, resolved before anything loads so a bad entry stops `serve` with its name.
    With none of those set it is the one model `resolve` picks, as a single-model server always did."""
    specs: list[tuple[str, str]] = []  # (where, spec)
    if serve.model:
        specs.append(("serve.model", serve.model))
    specs += [(f"serve.models[{i}]", spec) for i, spec in enumerate(serve.models)]
    if not specs and not serve.variants:
        return [resolve(model_name, None, serve.engine, workspace)], []
    targets: list[Target] = []
    where_of: dict[str, str] = {}
    by_spec: dict[str, Target] = {}

    def add(where: str, spec: str) -> Target:
        if spec in by_spec:
            return by_spec[spec]
        try:
            target = resolve(model_name, spec, serve.engine, workspace)
        except UsageError as exc:
            message = exc.message if exc.message.startswith("serve.model: ") else f"{spec!r}: {exc.message}"
            raise UsageError(f"{where}: {message.removeprefix('serve.model: ')}", hint=exc.hint) from None
        if target.name in where_of:
            raise UsageError(
                f"{where}: {spec!r} is served as {target.name!r}, the same name as {where_of[target.name]}",
                hint="serve each model once; copy a file under another name to serve two of the same name",
            )
        if target.name == serve.variant_group and serve.variants:
            raise UsageError(f"{where}: {spec!r} is served as {target.name!r}, the name of serve.variant_group",
                             hint="set serve.variant_group to another name")  # fmt: skip
        where_of[target.name] = where
        by_spec[spec] = target
        targets.append(target)
        return target

    for where, spec in specs:
        add(where, spec)
    variants = []
    for i, v in enumerate(serve.variants):
        named = next((t for t in targets if t.name == v.model), None)
        target = named or add(f"serve.variants[{i}].model", v.model)
        variants.append(Variant(v.name, target.name, v.weight))
    return targets, variants


def weights_bytes(target: Target) -> int:
    """How much memory the model's weights take, judged from their files (an adapter adds its local base's)."""
    if target.path.is_file():
        return target.path.stat().st_size
    size = _folder_weights(target.path)
    if target.base_model and Path(target.base_model).is_dir():
        size += _folder_weights(Path(target.base_model))
    return size


def _folder_weights(folder: Path) -> int:
    if not folder.is_dir():  # a hub id: its size is unknown until it loads
        return 0
    return sum(f.stat().st_size for pattern in ("*.safetensors", "*.bin", "*.gguf") for f in folder.glob(pattern))
