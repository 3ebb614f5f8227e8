"""The one place that loads and saves weights, tokenizers and adapters: safetensors only, remote code only when asked.

Every stage (train, eval, export, serve) goes through these functions, so a run folder written by one stage reads
back the same way in the next.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from llmforge.errors import InputError, UsageError

log = logging.getLogger(__name__)

# Tokenizer classes that mean "the tokenizer.json as saved": loading them through AutoTokenizer may swap in a
# model-specific class (Qwen2Tokenizer re-splits text differently), so they are loaded exactly as saved.
_PLAIN_TOKENIZER_CLASSES = {"PreTrainedTokenizerFast", "TokenizersBackend"}


def _is_local(name: str | Path) -> bool:
    return Path(name).expanduser().exists()


def model_ref(name: str) -> str:
    """A model name as runs record it: a local folder as its absolute path (usable from any folder), a hub id as is."""
    return str(Path(name).expanduser().resolve()) if _is_local(name) else name


def _missing_model(name: str, exc: Exception) -> InputError:
    return InputError(
        f"model.name: cannot load {name!r} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})",
        hint="give a local folder holding config.json + *.safetensors, or a Hugging Face hub id you can reach",
    )


def load_tokenizer(name: str | Path | None, *, revision: str | None = None, trust_remote_code: bool = False,
                   download: bool = True, required: bool = True):
    """The tokenizer of a model folder or hub id; plain `tokenizer.json` tokenizers load exactly as saved.

    `download=False` takes a hub id only from the local cache. `required=False` is for stages that can do without
    one (data counts characters then): None instead of an error when there is no name, no transformers or no
    tokenizer to be had, with the reason logged."""
    if not name and not required:
        return None
    try:
        from transformers import AutoTokenizer, PreTrainedTokenizerFast
    except ImportError:
        if required:
            raise
        log.info("transformers is not installed: lengths are counted in characters")
        return None

    path = Path(name).expanduser()
    config_file = path / "tokenizer_config.json"
    try:
        if config_file.is_file() and (path / "tokenizer.json").is_file():
            declared = json.loads(config_file.read_text(encoding="utf-8")).get("tokenizer_class")
            if declared in _PLAIN_TOKENIZER_CLASSES:
                return PreTrainedTokenizerFast.from_pretrained(path)
        kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code}
        if not download and not path.is_dir():
            kwargs["local_files_only"] = True
        return AutoTokenizer.from_pretrained(str(name), **kwargs)
    except (OSError, ValueError) as exc:
        if not required:
            log.info("no local tokenizer for %s (%s): lengths are counted in characters", name, exc)
            return None
        raise _missing_model(str(name), exc) from None


# What a chat template that cannot train (chat_spans cannot find the assistant's tokens) means to each caller.
UNTRAINABLE = ("raise", "keep", "keep-own")


def use_training_template(tokenizer, configured: str = "auto", *, untrainable: str):
    """Give the tokenizer the chat template training uses, chosen as chat_spans.verdict_for decides (the tokenizer's
    own, a family's or TRL's marked twin, or the configured family), so every stage renders and masks conversations
    as training does. Returns the chat_spans.Verdict.

    When the template cannot train, `untrainable` says what happens:
    - "raise": UsageError with the reason (train: it cannot mask the assistant's tokens);
    - "keep": the tokenizer keeps its own template, or none (data: counts and previews say why, nothing fails);
    - "keep-own": the tokenizer keeps its own template; UsageError only when it has none (eval: conversations can
      still be rendered and generated from, they just cannot be scored)."""
    from llmforge import chat_spans

    if untrainable not in UNTRAINABLE:
        raise ValueError(f"untrainable must be one of {UNTRAINABLE}, not {untrainable!r}")
    verdict = chat_spans.verdict_for(tokenizer, configured)
    if verdict.trains:
        tokenizer.chat_template = verdict.template
        return verdict
    log.info("no training chat template: %s", verdict.reason)
    if untrainable == "raise" or (untrainable == "keep-own" and not getattr(tokenizer, "chat_template", None)):
        chat_spans.require(verdict)
    return verdict


def load_config(name: str | Path, *, revision: str | None = None, trust_remote_code: bool = False):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(name), revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as exc:
        raise _missing_model(str(name), exc) from None


def torch_dtype(name: str | None):
    import torch

    return {
        None: None,
        "auto": None,
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }[name]


def load_model(
    name: str | Path,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    dtype: str | None = None,
    quantization_config: Any = None,
    device_map: Any = None,
):
    """A causal LM from a local folder (safetensors) or the hub; never pickled `.bin` weights."""
    from transformers import AutoModelForCausalLM

    kwargs: dict[str, Any] = {"revision": revision, "trust_remote_code": trust_remote_code, "use_safetensors": True}
    if torch_dtype(dtype) is not None:
        kwargs["dtype"] = torch_dtype(dtype)
    if quantization_config is not None:
        kwargs["quantization_config"] = quantization_config
    if device_map is not None:
        kwargs["device_map"] = device_map
    try:
        return AutoModelForCausalLM.from_pretrained(str(name), **kwargs)
    except (OSError, ValueError) as exc:
        raise _missing_model(str(name), exc) from None


def load_adapter(base, adapter_dir: str | Path, *, trainable: bool = False):
    """Base model + a PEFT adapter saved by `save_adapter`."""
    from peft import PeftModel

    if not (Path(adapter_dir) / "adapter_config.json").is_file():
        raise InputError(f"{adapter_dir}: no adapter_config.json", hint="is this a finished LoRA run folder?")
    return PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)


def save_model(model, out_dir: str | Path) -> Path:
    """Full weights as safetensors, plus config.json and generation_config.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    return out


def save_adapter(peft_model, out_dir: str | Path) -> Path:
    """Only the adapter weights (adapter_model.safetensors) and adapter_config.json."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    peft_model.save_pretrained(out, safe_serialization=True)
    return out


def save_tokenizer(tokenizer, out_dir: str | Path, chat_template: str | None = None) -> Path:
    """The tokenizer with the chat template it was trained with (saved as chat_template.jinja)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if chat_template is not None:
        tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(out)
    return out


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """Where a finished run keeps its parts: {'base_model', 'revision', 'adapter' | 'model', 'tokenizer',
    'chat_template'}, paths absolute. Export, eval and serve read runs through this."""
    run = Path(run_dir)
    manifest_file = run / "manifest.json"
    if not manifest_file.is_file():
        raise UsageError(f"{run}: not a finished training run (no manifest.json)", hint="train one: llmforge train")
    manifest = json.loads(manifest_file.read_text(encoding="utf-8"))
    out: dict[str, Any] = {"base_model": manifest.get("base_model"), "revision": manifest.get("revision")}
    for key in ("adapter", "model", "tokenizer", "chat_template"):
        if manifest.get(key):
            out[key] = run / manifest[key]
    return out
