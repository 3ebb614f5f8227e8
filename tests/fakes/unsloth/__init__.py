"""A stand-in for the `unsloth` package, so the Unsloth backend's wiring can be trained through on CPU.

Unsloth itself runs on CUDA only (its import fails without a GPU), so no test here can use it. This stand-in has
`FastLanguageModel.from_pretrained` and `FastLanguageModel.get_peft_model` with the keyword names of unsloth
2025.x-2026.x (unsloth/models/loader.py and llama.py), and loads and wraps the model with transformers and PEFT,
in full precision, on the CPU. It is stricter than the real library, whose **kwargs swallow a misspelt keyword:
here an unknown keyword raises TypeError.

Each call, and the import itself, is written as one JSON line to the file named by FAKE_UNSLOTH_LOG:
- {"event": "import", "already_imported": [...]}: which of trl, transformers and peft were imported before it
  (Unsloth must come first, since it patches them);
- {"event": "from_pretrained" | "get_peft_model", ...keyword arguments}.

It is only importable as `unsloth` by a test that puts tests/fakes on sys.path (a subprocess's PYTHONPATH).
"""

from __future__ import annotations

import json
import os
import sys

PATCHED = ("trl", "transformers", "peft")
__version__ = "2026.11-stand-in"


def _log(event: str, **fields) -> None:
    path = os.environ.get("FAKE_UNSLOTH_LOG")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"event": event, **fields}, default=str) + "\n")


_log("import", already_imported=sorted(m for m in PATCHED if m in sys.modules))


class FastLanguageModel:
    @staticmethod
    def from_pretrained(
        model_name="unsloth/Llama-3.2-1B-Instruct",
        max_seq_length=2048,
        dtype=None,
        load_in_4bit=True,
        load_in_8bit=False,
        load_in_16bit=False,
        full_finetuning=False,
        token=None,
        device_map="sequential",
        trust_remote_code=False,
        use_gradient_checkpointing="unsloth",
        revision=None,
        use_safetensors=None,
        local_files_only=False,
    ):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        _log("from_pretrained", model_name=model_name, max_seq_length=max_seq_length, dtype=dtype,
             load_in_4bit=load_in_4bit, load_in_8bit=load_in_8bit, full_finetuning=full_finetuning,
             trust_remote_code=trust_remote_code, use_gradient_checkpointing=use_gradient_checkpointing,
             revision=revision, use_safetensors=use_safetensors)
        kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
        if use_safetensors is not None:
            kwargs["use_safetensors"] = use_safetensors
        model = AutoModelForCausalLM.from_pretrained(model_name, **kwargs)
        model.max_seq_length = max_seq_length
        tokenizer = AutoTokenizer.from_pretrained(model_name, revision=revision)
        return model, tokenizer

    @staticmethod
    def get_peft_model(
        model,
        r=16,
        target_modules=("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"),
        lora_alpha=16,
        lora_dropout=0.0,
        bias="none",
        layers_to_transform=None,
        use_gradient_checkpointing="unsloth",
        random_state=3407,
        max_seq_length=2048,
        use_rslora=False,
        modules_to_save=None,
        init_lora_weights=True,
        loftq_config=None,
        use_dora=False,  # the real one reads it from **kwargs
    ):
        from peft import LoraConfig, get_peft_model
        from transformers import set_seed

        if not isinstance(target_modules, (list, tuple)):
            raise TypeError("target_modules must be a list of module names (unsloth iterates over it)")
        if type(r) is not int or r <= 0:
            raise TypeError(f"Unsloth: Rank of {r} must be an integer larger than 0.")
        _log("get_peft_model", r=r, target_modules=list(target_modules), lora_alpha=lora_alpha,
             lora_dropout=lora_dropout, bias=bias, use_gradient_checkpointing=use_gradient_checkpointing,
             random_state=random_state, use_dora=use_dora)
        set_seed(random_state)
        config = LoraConfig(r=r, lora_alpha=lora_alpha, lora_dropout=lora_dropout, target_modules=list(target_modules),
                            bias=bias, use_dora=use_dora, use_rslora=use_rslora, task_type="CAUSAL_LM")
        return get_peft_model(model, config)
