"""Fold PEFT adapters (LoRA, QLoRA, DPO) into the full-precision base and save a plain HF model folder.

QLoRA adapters were trained against a 4-bit base, but merging into 4-bit weights would bake the quantization
error in; the base is always loaded unquantized here. Several adapters are applied (and merged) in order.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from llmforge.errors import InputError, UsageError

log = logging.getLogger(__name__)

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
    "chat_template.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
)  # fmt: skip
DTYPES = ("auto", "float32", "bfloat16", "float16")


def check_adapter(adapter_dir: Path) -> dict:
    adapter_dir = Path(adapter_dir)
    config = adapter_dir / "adapter_config.json"
    if not config.is_file():
        raise InputError(f"{adapter_dir}: no adapter_config.json", hint="point at a PEFT adapter folder (runs/<run>/adapter)")
    if not any(adapter_dir.glob("adapter_model.*")):
        raise InputError(f"{adapter_dir}: no adapter_model.safetensors", hint="the adapter was not saved completely")
    try:
        return json.loads(config.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{config}:{e.lineno}: invalid JSON: {e.msg}") from None


def _dtype(name: str, base_dir: Path):
    import torch

    if name == "auto":
        config = json.loads((base_dir / "config.json").read_text(encoding="utf-8")) if (
            base_dir / "config.json").is_file() else {}
        name = str(config.get("dtype") or config.get("torch_dtype") or "float32")
    if name not in DTYPES[1:]:
        raise UsageError(f"--dtype: unknown dtype {name!r}", hint=f"use one of {', '.join(DTYPES)}")
    return getattr(torch, name)


def merge_adapters(base: str | Path, adapters: list[Path], out_dir: Path, dtype: str = "auto") -> dict:
    """Write the merged model (safetensors, config, generation config, tokenizer, chat template) into out_dir
    (which must exist and be empty: the caller makes it atomically). Returns facts for the manifest."""
    import torch

    from llmforge import checkpoints

    if not adapters:
        raise UsageError("nothing to merge: no adapter given")
    configs = [check_adapter(a) for a in adapters]
    base_path = Path(base)
    if not base_path.exists() and not str(base).count("/") == 1:
        raise InputError(f"base model {base} not found", hint="set model.name to the base model folder or hub id")
    torch_dtype = _dtype(dtype, base_path)
    # The tokenizer the adapter was trained with (training may add tokens or set a template) wins over the base's.
    tok_dir = next((a for a in reversed(adapters) if (a / "tokenizer_config.json").is_file()), base_path)
    tokenizer = checkpoints.load_tokenizer(tok_dir)
    model = checkpoints.load_model(base, dtype="float32")  # merge in fp32, cast after
    rows = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > rows:
        model.resize_token_embeddings(len(tokenizer))
    probe = torch.tensor([tokenizer("The quick brown fox", add_special_tokens=True)["input_ids"] or [0]])
    max_diff = 0.0
    for adapter in adapters:
        peft_model = checkpoints.load_adapter(model, adapter)
        peft_model.eval()
        with torch.no_grad():
            expected = peft_model(probe).logits
        model = peft_model.merge_and_unload()
        with torch.no_grad():
            max_diff = max(max_diff, float((model(probe).logits - expected).abs().max()))
    model = model.to(torch_dtype)
    model.save_pretrained(str(out_dir), safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (tok_dir / name).is_file():
            shutil.copy2(tok_dir / name, out_dir / name)
    return {
        "base_model": str(base),
        "adapters": [str(a) for a in adapters],
        "adapter_types": [c.get("peft_type", "LORA") for c in configs],
        "dtype": str(torch_dtype).replace("torch.", ""),
        "tokenizer_from": str(tok_dir),
        "merge_max_abs_diff": max_diff,  # merged vs base+adapter logits, fp32, before the dtype cast
    }
