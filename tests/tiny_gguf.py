"""A GGUF of a tiny HF model for serving tests and benchmarks.

Uses the project's converter (llmforge.export) when it is present; until the export stage lands, a minimal
llama-only writer on the `gguf` library (f16 matrices, byte-level BPE vocab) stands in. Test code only.
"""

from __future__ import annotations

import json
from pathlib import Path


def write_gguf(model_dir: Path, out_path: Path, *, f32: bool = False) -> Path:
    """Write `out_path` from the HF llama/qwen2 folder `model_dir` and return it. `f32=True` writes every tensor
    in f32 with the stand-in writer (llama only), for tests that compare greedy tokens exactly."""
    if f32:
        _write_minimal_llama(Path(model_dir), Path(out_path), f32=True)
        return Path(out_path)
    try:
        from llmforge.export.gguf_convert import convert
        from llmforge.export.quant_types import parse_quants
    except ImportError:
        _write_minimal_llama(Path(model_dir), Path(out_path))
    else:
        convert(Path(model_dir), Path(out_path), parse_quants("f16")[0], name=Path(model_dir).name)
    return Path(out_path)


def _permute(w, n_head: int):
    # HF stores rotary halves; llama.cpp's llama graph expects interleaved pairs (facts.md).
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _write_minimal_llama(model_dir: Path, out_path: Path, f32: bool = False) -> None:
    import gguf
    import numpy as np
    from safetensors.numpy import load_file

    config = json.loads((model_dir / "config.json").read_text())
    if config.get("model_type") != "llama":
        raise ValueError("the stand-in GGUF writer handles llama only")
    tok = json.loads((model_dir / "tokenizer.json").read_text())
    tok_config = json.loads((model_dir / "tokenizer_config.json").read_text())

    rope = config.get("rope_parameters") or {}
    theta = rope.get("rope_theta", config.get("rope_theta", 10000.0))
    n_head, n_kv = config["num_attention_heads"], config["num_key_value_heads"]
    n_layers = config["num_hidden_layers"]

    vocab = dict(tok["model"]["vocab"])
    special = set()
    for added in tok.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
        if added.get("special"):
            special.add(added["id"])
    tensors = load_file(str(model_dir / "model.safetensors"))
    n_vocab = tensors["model.embed_tokens.weight"].shape[0]
    by_id = {i: t for t, i in vocab.items()}
    tokens = [by_id.get(i, f"[PAD{i}]") for i in range(n_vocab)]
    types = [3 if i in special else (1 if i in by_id else 5) for i in range(n_vocab)]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]

    w = gguf.GGUFWriter(str(out_path), "llama")
    w.add_name(model_dir.name)
    w.add_context_length(config["max_position_embeddings"])
    w.add_embedding_length(config["hidden_size"])
    w.add_block_count(n_layers)
    w.add_feed_forward_length(config["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(config["rms_norm_eps"])
    w.add_rope_freq_base(float(theta))
    w.add_rope_dimension_count(config["hidden_size"] // n_head)
    w.add_file_type(0 if f32 else 1)  # all f32 / mostly f16
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    eos = vocab[tok_config.get("eos_token") or "<|im_end|>"]
    w.add_eos_token_id(eos)
    if tok_config.get("pad_token") in vocab:
        w.add_pad_token_id(vocab[tok_config["pad_token"]])
    w.add_add_bos_token(False)
    template = model_dir / "chat_template.jinja"
    if template.exists():
        w.add_chat_template(template.read_text())

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layers)
    for name, data in tensors.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue
        # f16 matrices, f32 norms: what an f16 export holds
        data = data.astype(np.float16 if data.ndim == 2 and not f32 else np.float32)
        if name.endswith("q_proj.weight"):
            data = _permute(data, n_head)
        elif name.endswith("k_proj.weight"):
            data = _permute(data, n_kv)
        new = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise ValueError(f"no GGUF name for {name}")
        w.add_tensor(new, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
