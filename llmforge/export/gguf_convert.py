"""Our HF -> GGUF converter for the model families people fine-tune, written on the `gguf` library.

It streams: the tensor table is planned from the safetensors headers, the GGUF header and tensor infos are written
first, then each tensor is read, transformed (Q/K permutation for llama's rope layout, Gemma's norm offset), cast or
quantized and written before the next is read, so peak memory is about one tensor, not the model. No torch import.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from llmforge.atomic import atomic_path
from llmforge.errors import InputError, UsageError
from llmforge.export import gguf_vocab, safetensors_stream
from llmforge.export.quant_types import QuantType

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ArchSpec:
    gguf_arch: str  # gguf.MODEL_ARCH member name
    permute_qk: bool  # llama.cpp's llama graph uses the interleaved rope layout; HF stores halves
    norm_offset: float = 0.0  # Gemma's RMSNorm scales by (1 + w); llama.cpp's by w, so w + 1 is written


ARCHITECTURES: dict[str, ArchSpec] = {
    "LlamaForCausalLM": ArchSpec("LLAMA", True),
    "MistralForCausalLM": ArchSpec("LLAMA", True),
    "Qwen2ForCausalLM": ArchSpec("QWEN2", False),
    "Qwen3ForCausalLM": ArchSpec("QWEN3", False),
    "Gemma2ForCausalLM": ArchSpec("GEMMA2", False, norm_offset=1.0),
    "Gemma3ForCausalLM": ArchSpec("GEMMA3", False, norm_offset=1.0),
    "Phi3ForCausalLM": ArchSpec("PHI3", False),
    "SmolLM3ForCausalLM": ArchSpec("SMOLLM3", True),
    "GraniteForCausalLM": ArchSpec("GRANITE", True),
    "Olmo2ForCausalLM": ArchSpec("OLMO2", False),
    "MixtralForCausalLM": ArchSpec("LLAMA", True),
    "Qwen2MoeForCausalLM": ArchSpec("QWEN2MOE", False),
}

# The HF architectures this converter writes itself; export.converter "auto" hands every other one to llama.cpp's
# convert_hf_to_gguf.py (llama_cpp_converter.py reads this).
NATIVE_ARCHITECTURES: frozenset[str] = frozenset(ARCHITECTURES)

_REQUIRED_CONFIG = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "rms_norm_eps")


def supported_architectures() -> list[str]:
    return sorted(ARCHITECTURES)


def read_config(model_dir: Path) -> dict:
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        raise InputError(f"{model_dir}: no such model folder", hint="pass a run name or a saved HF model folder")
    path = model_dir / "config.json"
    if not path.is_file():
        raise InputError(f"{model_dir}: no config.json", hint="point at a folder saved with save_pretrained")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: invalid JSON: {e.msg}", hint="re-save the model") from None
    if "text_config" in config and "hidden_size" not in config:
        config = {**config["text_config"], "architectures": config.get("architectures")}
    return config


def architecture_of(config: dict, path: Path) -> str:
    archs = config.get("architectures") or []
    if not archs:
        raise InputError(f"{path}/config.json: architectures: missing", hint="re-save the model with transformers")
    return archs[0]


def arch_spec(config: dict, model_dir: Path) -> ArchSpec:
    arch = architecture_of(config, model_dir)
    if arch not in ARCHITECTURES:
        raise UsageError(
            f"{model_dir}: architecture {arch} is not supported by the built-in converter "
            f"(supported: {', '.join(supported_architectures())})",
            hint="set export.llama_cpp_dir to a llama.cpp checkout to use its convert_hf_to_gguf.py",
        )
    missing = [k for k in _REQUIRED_CONFIG if k not in config]
    if missing:
        raise InputError(f"{model_dir}/config.json: {missing[0]}: missing", hint="re-save the model with transformers")
    spec = ARCHITECTURES[arch]
    _check_family(spec, config, model_dir)
    return spec


def _refuse(model_dir: Path, what: str) -> UsageError:
    return UsageError(f"{model_dir}/config.json: {what}; llama.cpp's graph for this architecture cannot reproduce it",
                      hint="a GGUF of this model would compute something else in llama.cpp; export.converter: "
                      "llama.cpp writes one anyway, and verification shows how far off it is")


def gemma_attention_scale(gguf_arch: str, config: dict) -> float:
    """The query scale llama.cpp hard-codes for Gemma 2/3 (it reads no key for it): 1/sqrt(hidden/heads) for the
    27B models, recognised by their layer count, else 1/sqrt(head_dim). HF uses query_pre_attn_scalar**-0.5."""
    if int(config["num_hidden_layers"]) == {"GEMMA2": 46, "GEMMA3": 62}[gguf_arch]:
        return 1.0 / math.sqrt(int(config["hidden_size"]) // int(config["num_attention_heads"]))
    return 1.0 / math.sqrt(head_dim_of(config))


def _check_family(spec: ArchSpec, config: dict, model_dir: Path) -> None:
    """Refuse settings llama.cpp fixes in code rather than reading from the file: a GGUF written anyway would load
    and compute something else than the HF model."""
    if spec.gguf_arch in ("GEMMA2", "GEMMA3"):
        scalar = config.get("query_pre_attn_scalar")
        assumed = gemma_attention_scale(spec.gguf_arch, config)
        if scalar is not None and not math.isclose(float(scalar) ** -0.5, assumed, rel_tol=1e-6):
            raise _refuse(model_dir, f"query_pre_attn_scalar {scalar} differs from the scale llama.cpp assumes "
                                     f"for {int(config['num_hidden_layers'])} layers")
    if spec.gguf_arch == "GEMMA2":  # its graph always applies both caps
        for key in ("attn_logit_softcapping", "final_logit_softcapping"):
            if not config.get(key):
                raise _refuse(model_dir, f"Gemma 2 without {key}")
    if spec.gguf_arch == "GEMMA3" and config.get("attn_logit_softcapping") is not None:
        raise _refuse(model_dir, "Gemma 3 with attn_logit_softcapping")
    if spec.gguf_arch == "SMOLLM3":
        layers = int(config["num_hidden_layers"])
        expected = [int((i + 1) % 4 != 0) for i in range(layers)]  # llama.cpp: every 4th layer has no rope
        if config.get("no_rope_layers") is not None and list(config["no_rope_layers"]) != expected:
            raise _refuse(model_dir, f"no_rope_layers {config['no_rope_layers']} is not every 4th layer")
        if config.get("use_sliding_window"):
            raise _refuse(model_dir, "SmolLM3 with use_sliding_window")
    if spec.gguf_arch == "QWEN2MOE":
        if config.get("norm_topk_prob"):
            raise _refuse(model_dir, "Qwen2-MoE with norm_topk_prob")  # llama.cpp never renormalises here
        if config.get("mlp_only_layers") or int(config.get("decoder_sparse_step") or 1) != 1:
            raise _refuse(model_dir, "Qwen2-MoE with dense layers (mlp_only_layers / decoder_sparse_step)")
        if config.get("use_sliding_window"):
            raise _refuse(model_dir, "Qwen2-MoE with use_sliding_window")
    if spec.gguf_arch == "OLMO2" and config.get("sliding_window"):
        raise _refuse(model_dir, "OLMo 2 with sliding_window")


def rope_settings(config: dict) -> tuple[float, dict]:
    """(theta, scaling parameters). transformers 5 keeps both under rope_parameters; 4.x had rope_theta and
    rope_scaling at the top level."""
    params = dict(config.get("rope_parameters") or {})
    if isinstance(params.get("full_attention"), dict):  # Gemma 3: one set per layer type; global layers here
        params = dict(params["full_attention"])
    scaling = dict(config.get("rope_scaling") or {})
    theta = params.get("rope_theta", config.get("rope_theta", 10000.0))
    merged = {**scaling, **params}
    merged.setdefault("rope_type", merged.get("type", "default"))
    return float(theta), merged


def head_dim_of(config: dict) -> int:
    return int(config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"])


def rotary_dims(config: dict) -> int:
    """How many of each head's dimensions rope rotates (Phi-4-mini: 0.75 of them); llama.cpp's n_rot."""
    partial = config.get("partial_rotary_factor") or rope_settings(config)[1].get("partial_rotary_factor") or 1.0
    return int(head_dim_of(config) * float(partial))


def permute_qk(w, n_head: int):
    """HF keeps each head's rotary pairs as two halves; llama.cpp's llama graph wants them interleaved."""
    head_dim = w.shape[0] // n_head
    return w.reshape(n_head, 2, head_dim // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def llama3_rope_factors(config: dict, theta: float, scaling: dict):
    """Per-frequency divisors of Llama 3.1's rope (the "llama3" rope type), as llama.cpp's rope_freqs tensor."""
    import numpy as np

    dim = head_dim_of(config)
    factor = float(scaling.get("factor", 8.0))
    low, high = float(scaling.get("low_freq_factor", 1.0)), float(scaling.get("high_freq_factor", 4.0))
    old_ctx = float(scaling.get("original_max_position_embeddings", 8192))
    out = []
    for i in range(0, dim, 2):
        wavelen = 2 * math.pi / (1.0 / theta ** (i / dim))
        if wavelen < old_ctx / high:
            out.append(1.0)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1.0 / ((1 - smooth) / factor + smooth))
    return np.asarray(out, dtype=np.float32)


@dataclass
class PlannedTensor:
    gguf_name: str
    entry: safetensors_stream.TensorEntry | None  # None for tensors we compute (rope_freqs)
    shape: tuple[int, ...]
    qtype: str  # gguf.GGMLQuantizationType member name
    permute_heads: int = 0  # >0: apply permute_qk with this many heads
    add: float = 0.0  # added to every value (Gemma's norm offset)
    experts: list[safetensors_stream.TensorEntry] = field(default_factory=list)  # stacked in this order


# HF keeps each MoE expert's matrices apart (…experts.<i>.w1.weight); llama.cpp wants one [n_expert, rows, cols]
# tensor per projection. Expert-major, so the stacked tensor is the experts' rows one after another: it streams.
_EXPERT = re.compile(r"^(?P<prefix>.+\.experts)\.(?P<index>\d+)\.(?P<proj>\w+)\.weight$")


def _tensor_type(shape: tuple[int, ...], quant: QuantType, gguf_name: str = "") -> str:
    if len(shape) < 2:
        return "F32"  # norms and biases stay f32: tiny, and llama.cpp computes them in f32 anyway
    if ".ffn_gate_inp" in gguf_name:
        return "F32"  # MoE routers: tiny, and expert choice hangs on small logit gaps (llama.cpp keeps them f32)
    if quant.numpy in ("Q8_0", "Q4_0", "Q5_0") and shape[-1] % 32 != 0:
        return "F16"  # block types need rows divisible by their block size (32)
    return quant.numpy


@dataclass
class Seams:
    """Conversion steps tests switch off one at a time, to prove each is load-bearing (leave one out and llama.cpp
    computes another model), and where they interrupt a conversion. Tests replace SEAMS (monkeypatch.setattr);
    production never does. Kept out of every signature so no caller can pass them."""

    permute: bool = True  # Q/K rows reordered for llama.cpp's rope layout (Llama family)
    rope_theta: bool = True
    family_keys: bool = True  # the per-family metadata keys (soft-capping, scales, ...)
    norm_offset: bool = True  # Gemma's RMSNorm weight + 1
    rope_factors: bool = True  # Phi-3 longrope factors
    pre_tokenizer: str | None = None  # a pre-tokenizer name forced instead of the one matching the HF tokenizer
    after_tensor: Callable[[int], None] | None = None  # called after each tensor is written


SEAMS = Seams()


def plan_tensors(model_dir: Path, config: dict, spec: ArchSpec, quant: QuantType) -> list[PlannedTensor]:
    import gguf

    tensors = safetensors_stream.model_tensors(model_dir)
    n_layers = int(config["num_hidden_layers"])
    arch = getattr(gguf.MODEL_ARCH, spec.gguf_arch)
    name_map = gguf.get_tensor_name_map(arch, n_layers)
    n_head = int(config["num_attention_heads"])
    n_kv = int(config.get("num_key_value_heads") or n_head)
    tied = bool(config.get("tie_word_embeddings", False))
    plan: list[PlannedTensor] = []
    stacks: dict[str, tuple[PlannedTensor, dict[int, safetensors_stream.TensorEntry]]] = {}
    for name, entry in tensors.items():
        if name.endswith(".rotary_emb.inv_freq"):
            continue  # recomputed by llama.cpp from rope.freq_base
        if m := _EXPERT.match(name):
            merged = f"{m['prefix']}.{m['proj']}.weight"
            if merged not in stacks:
                gguf_name = name_map.get_name(merged, try_suffixes=(".weight",))
                if gguf_name is None:
                    raise InputError(f"{entry.file}: expert tensor {name} has no GGUF name for architecture "
                                     f"{spec.gguf_arch.lower()}", hint="set export.converter: llama.cpp")
                stacks[merged] = (PlannedTensor(gguf_name, None, (), ""), {})
                plan.append(stacks[merged][0])
            stacks[merged][1][int(m["index"])] = entry
            continue
        if name == "lm_head.weight" and tied:
            continue  # tied: llama.cpp uses token_embd when output.weight is absent
        gguf_name = name_map.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise InputError(
                f"{entry.file}: tensor {name} has no GGUF name for architecture {spec.gguf_arch.lower()}",
                hint="the checkpoint has extra weights this converter does not know; "
                "set export.llama_cpp_dir to use llama.cpp's converter",
            )
        heads = 0
        if spec.permute_qk and SEAMS.permute:
            if name.endswith("self_attn.q_proj.weight") or name.endswith("self_attn.q_proj.bias"):
                heads = n_head
            elif name.endswith("self_attn.k_proj.weight") or name.endswith("self_attn.k_proj.bias"):
                heads = n_kv
        add = spec.norm_offset if name.endswith("norm.weight") else 0.0
        plan.append(PlannedTensor(gguf_name, entry, entry.shape, _tensor_type(entry.shape, quant, gguf_name), heads,
                                  add))
    n_experts = int(config.get("num_local_experts") or config.get("num_experts") or 0)
    for merged, (planned, parts) in stacks.items():
        shapes = {e.shape for e in parts.values()}
        if sorted(parts) != list(range(n_experts)) or len(shapes) != 1:
            raise InputError(f"{model_dir}: {merged}: found experts {sorted(parts)} of shapes {sorted(shapes)}, "
                             f"config says {n_experts} experts", hint="the checkpoint is incomplete; re-save it")
        planned.experts = [parts[i] for i in range(n_experts)]
        planned.shape = (n_experts, *shapes.pop())
        planned.qtype = _tensor_type(planned.shape, quant, planned.gguf_name)
    names = {p.gguf_name for p in plan}
    if "token_embd.weight" not in names:
        raise InputError(f"{model_dir}: no token embedding (model.embed_tokens.weight) in the safetensors",
                         hint="the checkpoint is incomplete; re-save it")
    if "output.weight" not in names and not tied:
        raise InputError(f"{model_dir}: no lm_head.weight and tie_word_embeddings is false",
                         hint="the checkpoint is incomplete; re-save it")
    missing = [b for b in range(n_layers) if not {f"blk.{b}.attn_q.weight", f"blk.{b}.attn_qkv.weight"} & names]
    if missing:
        raise InputError(f"{model_dir}: layer {missing[0]} has no attention weights but config says "
                         f"{n_layers} layers", hint="the checkpoint is incomplete; re-save it")
    return plan


def _nbytes(shape: tuple[int, ...], qtype: str) -> int:
    import gguf

    t = getattr(gguf.GGMLQuantizationType, qtype)
    block, type_size = gguf.GGML_QUANT_SIZES[t]
    count = 1
    for d in shape:
        count *= d
    return count // block * type_size


def _file_type(quant: QuantType) -> int:
    import gguf

    return {
        "F32": gguf.LlamaFileType.ALL_F32, "F16": gguf.LlamaFileType.MOSTLY_F16,
        "BF16": gguf.LlamaFileType.MOSTLY_BF16, "Q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        "Q4_0": gguf.LlamaFileType.MOSTLY_Q4_0, "Q5_0": gguf.LlamaFileType.MOSTLY_Q5_0,
    }[quant.numpy]


def _add_metadata(writer, config: dict, spec: ArchSpec, vocab, name: str, quant: QuantType) -> None:
    import gguf

    writer.add_name(name)
    writer.add_file_type(_file_type(quant))
    if quant.numpy not in ("F32", "F16", "BF16"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    n_head = int(config["num_attention_heads"])
    head_dim = head_dim_of(config)
    writer.add_vocab_size(len(vocab.tokens))
    writer.add_context_length(int(config.get("max_position_embeddings") or 4096))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(n_head)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or n_head))
    writer.add_layer_norm_rms_eps(float(config["rms_norm_eps"]))
    writer.add_rope_dimension_count(rotary_dims(config))
    if head_dim != int(config["hidden_size"]) // n_head:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    theta, scaling = rope_settings(config)
    if SEAMS.rope_theta:
        writer.add_rope_freq_base(theta)
    rope_type = scaling.get("rope_type", "default")
    if rope_type == "linear":
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
    elif rope_type == "yarn":
        writer.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        writer.add_rope_scaling_factor(float(scaling["factor"]))
        writer.add_rope_scaling_orig_ctx_len(int(scaling["original_max_position_embeddings"]))
    elif rope_type in ("longrope", "su") and spec.gguf_arch == "PHI3":
        pass  # rope_factors_long/short tensors and an attention factor (below and in convert)
    elif rope_type not in ("default", "llama3"):
        raise UsageError(f"config.json: rope type {rope_type!r} is not supported by the built-in converter",
                         hint="set export.llama_cpp_dir to use llama.cpp's converter")
    if SEAMS.family_keys:
        _add_family_metadata(writer, config, spec)
    gguf_vocab.add_to_writer(writer, vocab)


def longrope_attention_factor(config: dict) -> float:
    """The cos/sin scale of Phi-3's longrope: the config's attention_factor, else HF's (and llama.cpp's converter's)
    sqrt(1 + ln(scale) / ln(original context))."""
    _, scaling = rope_settings(config)
    if scaling.get("attention_factor") is not None:
        return float(scaling["attention_factor"])
    orig = int(scaling.get("original_max_position_embeddings") or config["original_max_position_embeddings"])
    scale = int(config["max_position_embeddings"]) / orig
    return math.sqrt(1 + math.log(scale) / math.log(orig)) if scale > 1.0 else 1.0


def _sliding_pattern(config: dict) -> list[bool] | None:
    """Which layers use the sliding window, from HF's layer_types (llama.cpp reads it as a bool array)."""
    types = config.get("layer_types")
    return [t == "sliding_attention" for t in types] if types else None


def _add_family_metadata(writer, config: dict, spec: ArchSpec) -> None:
    """The keys each family's llama.cpp graph reads beyond the llama set (src/models/<arch>.cpp, load_arch_hparams).
    Where llama.cpp has a default that differs from HF's absence of the feature, the neutral value is written."""
    arch = spec.gguf_arch
    if arch in ("GEMMA2", "GEMMA3"):
        head_dim = head_dim_of(config)
        writer.add_key_length(head_dim)  # Gemma's head_dim is not hidden/heads in general; always say it
        writer.add_value_length(head_dim)
        # llama.cpp defaults to a cap of 30 when the key is missing; HF's None means no cap at all
        writer.add_final_logit_softcapping(float(config.get("final_logit_softcapping") or 0.0))
        # the per-layer array overrides llama.cpp's fixed patterns (every 2nd layer global for Gemma 2, every 6th
        # for Gemma 3), so a config with other layer_types converts right too
        if config.get("sliding_window"):
            writer.add_sliding_window(int(config["sliding_window"]))
        if (pattern := _sliding_pattern(config)) is not None:
            writer.add_sliding_window_pattern(pattern)
    if arch == "GEMMA2":
        writer.add_attn_logit_softcapping(float(config["attn_logit_softcapping"]))
    if arch == "GEMMA3":
        params = config.get("rope_parameters") or {}
        local = (params.get("sliding_attention") or {}).get("rope_theta", config.get("rope_local_base_freq"))
        if local is not None:  # llama.cpp's default for the local layers is 10000, Gemma 3's too, but say it
            writer.add_rope_freq_base_swa(float(local))
    if arch == "PHI3":
        _, scaling = rope_settings(config)
        orig = scaling.get("original_max_position_embeddings", config.get("original_max_position_embeddings"))
        if orig:
            writer.add_rope_scaling_orig_ctx_len(int(orig))
        if scaling.get("rope_type") in ("longrope", "su"):
            writer.add_rope_scaling_attn_factors(longrope_attention_factor(config))
        # llama.cpp disables Phi-3's sliding window (it warns); 0 marks "none" as llama.cpp's converter does
        writer.add_sliding_window(int(config.get("sliding_window") or 0))
    if n_experts := config.get("num_local_experts") or config.get("num_experts"):
        writer.add_expert_count(int(n_experts))
        writer.add_expert_used_count(int(config["num_experts_per_tok"]))
    if arch == "QWEN2MOE":
        writer.add_expert_feed_forward_length(int(config["moe_intermediate_size"]))
        writer.add_expert_shared_feed_forward_length(int(config["shared_expert_intermediate_size"]))
    if arch == "GRANITE":
        # HF multiplies by these; llama.cpp reads logit_scale as a divisor, exactly as HF's logits_scaling
        writer.add_embedding_scale(float(config.get("embedding_multiplier", 1.0)))
        writer.add_residual_scale(float(config.get("residual_multiplier", 1.0)))
        writer.add_attention_scale(float(config.get("attention_multiplier", 1.0)))
        writer.add_logit_scale(float(config.get("logits_scaling", 1.0)))


def convert(model_dir: Path, out_path: Path, quant: QuantType, *, name: str | None = None) -> dict:
    """Write `out_path` (atomically) from the HF model in `model_dir`. Returns facts for the manifest."""
    import gguf
    import numpy as np

    model_dir = Path(model_dir)
    if quant.numpy is None:
        raise UsageError(f"{quant.name} is made by llama.cpp's quantizer, not by the converter")
    config = read_config(model_dir)
    spec = arch_spec(config, model_dir)
    plan = plan_tensors(model_dir, config, spec, quant)
    if not SEAMS.norm_offset:
        for p in plan:
            p.add = 0.0
    n_vocab = next(p.shape[0] for p in plan if p.gguf_name == "token_embd.weight")
    vocab = gguf_vocab.load_vocab(model_dir, n_vocab)
    if SEAMS.pre_tokenizer is not None:
        vocab.pre = SEAMS.pre_tokenizer
    theta, scaling = rope_settings(config)
    extra = {}
    if scaling.get("rope_type") == "llama3" and spec.gguf_arch == "LLAMA":
        extra["rope_freqs.weight"] = llama3_rope_factors(config, theta, scaling)
        plan.append(PlannedTensor("rope_freqs.weight", None, extra["rope_freqs.weight"].shape, "F32"))
    if scaling.get("rope_type") in ("longrope", "su") and spec.gguf_arch == "PHI3" and SEAMS.rope_factors:
        # Phi-3.5 / Phi-3-128k: llama.cpp picks the long or short per-frequency factors by context size, as HF
        # picks them by sequence length against original_max_position_embeddings
        for kind in ("long", "short"):
            extra[f"rope_factors_{kind}.weight"] = np.asarray(scaling[f"{kind}_factor"], dtype=np.float32)
            plan.append(PlannedTensor(f"rope_factors_{kind}.weight", None, extra[f"rope_factors_{kind}.weight"].shape,
                                      "F32"))

    arch_name = gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, spec.gguf_arch)]
    writer = gguf.GGUFWriter(None, arch_name)
    _add_metadata(writer, config, spec, vocab, name or model_dir.name, quant)
    for p in plan:
        qt = getattr(gguf.GGMLQuantizationType, p.qtype)
        writer.add_tensor_info(p.gguf_name, p.shape, np.dtype(np.float32), _nbytes(p.shape, p.qtype), raw_dtype=qt)

    with atomic_path(out_path) as tmp:
        try:
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
        finally:
            writer.close()
        # Tensor data: appended block by block (GGUFWriter wants each tensor whole in memory). Layout: the data
        # section starts aligned, and each tensor is padded to the alignment, matching the offsets written above.
        align = writer.data_alignment
        with open(tmp, "ab") as out:
            _pad(out, align)
            for i, p in enumerate(plan):
                written = 0
                if p.experts:
                    blocks = (block for e in p.experts for block in safetensors_stream.iter_rows(e))
                elif p.entry is None:
                    blocks = [extra[p.gguf_name]]
                elif p.permute_heads:  # a head's rows must be together to permute; q/k are hidden x hidden at most
                    blocks = [permute_qk(safetensors_stream.load(p.entry), p.permute_heads)]
                else:
                    blocks = safetensors_stream.iter_rows(p.entry)
                for block in blocks:
                    if p.add:
                        block = block + p.add
                    data = _encode(block, p.qtype)
                    data.tofile(out)
                    written += data.nbytes
                    del data, block
                if written != _nbytes(p.shape, p.qtype):
                    raise RuntimeError(f"{p.gguf_name}: wrote {written} bytes, planned {_nbytes(p.shape, p.qtype)}")
                _pad(out, align)
                if SEAMS.after_tensor is not None:
                    SEAMS.after_tensor(i)
    return {
        "architecture": architecture_of(config, model_dir),
        "gguf_architecture": arch_name,
        "tensors": len(plan),
        "tokenizer_model": vocab.model,
        "tokenizer_pre": vocab.pre,
        "rope_theta": theta,
        "tied_embeddings": "output.weight" not in {p.gguf_name for p in plan},
    }


def _pad(f, align: int) -> None:
    f.write(b"\0" * (-f.tell() % align))


def _encode(data, qtype: str):
    import gguf
    import numpy as np

    if qtype == "F32":
        return np.ascontiguousarray(data, dtype=np.float32)
    if qtype == "F16":
        return np.ascontiguousarray(data, dtype=np.float16)
    return gguf.quants.quantize(np.ascontiguousarray(data, dtype=np.float32),
                                getattr(gguf.GGMLQuantizationType, qtype))
