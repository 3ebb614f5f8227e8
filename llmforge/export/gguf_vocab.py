"""Turn a HF tokenizer.json (+ tokenizer_config.json) into the GGUF tokenizer keys llama.cpp reads.

Two families: byte-level BPE (tokenizer.ggml.model "gpt2": tokens, types, merges, and the pre-tokenizer whose
regex matches the HF one) and SentencePiece-style BPE with byte fallback (model "llama": tokens, scores, types).
Anything else fails with a clear message rather than writing a file that tokenizes differently.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

from llmforge.errors import InputError, UsageError

log = logging.getLogger(__name__)

# HF split regexes -> the llama.cpp pre-tokenizer that implements the same regex.
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_SPLIT_REGEXES = {
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "llama-bpe",
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+": "qwen2",
    _GPT2_REGEX: "gpt-2",
}

# gguf.TokenType values (kept here so this module imports without numpy)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass
class GgufVocab:
    model: str  # tokenizer.ggml.model: "gpt2" or "llama"
    pre: str | None  # tokenizer.ggml.pre
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    special_ids: dict[str, int] = field(default_factory=dict)  # bos, eos, unk, pad
    add_bos: bool = False
    add_eos: bool = False
    add_space_prefix: bool | None = None
    chat_template: str | None = None


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: invalid JSON: {e.msg}", hint="re-save the tokenizer") from None


def pre_tokenizer_name(tok: dict) -> str:
    """The llama.cpp pre-tokenizer whose regex equals the byte-level BPE pre-tokenizer of `tok`."""
    pre = tok.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    splits = [s for s in steps if s.get("type") == "Split"]
    byte_level = [s for s in steps if s.get("type") == "ByteLevel"]
    if not byte_level:
        raise UsageError("tokenizer.json: byte-level BPE without a ByteLevel pre-tokenizer is not supported")
    if byte_level[0].get("add_prefix_space"):
        raise UsageError("tokenizer.json: ByteLevel add_prefix_space=true has no llama.cpp equivalent")
    if not splits and byte_level[0].get("use_regex", True):
        return "gpt-2"
    if len(splits) == 1 and not byte_level[0].get("use_regex", True):
        regex = (splits[0].get("pattern") or {}).get("Regex")
        if regex in _SPLIT_REGEXES:
            return _SPLIT_REGEXES[regex]
        raise UsageError(
            f"tokenizer.json: no llama.cpp pre-tokenizer is known to match the split regex {regex!r}",
            hint="known: " + ", ".join(sorted(set(_SPLIT_REGEXES.values())))
            + "; set export.converter: llama.cpp to use llama.cpp's own converter",
        )
    raise UsageError(
        f"tokenizer.json: unsupported pre-tokenizer layout {[s.get('type') for s in steps]}",
        hint="set export.converter: llama.cpp to use llama.cpp's own converter",
    )


def _token_text(entry) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict) and isinstance(entry.get("content"), str):
        return entry["content"]
    return None


def _special_ids(model_dir: Path, tok: dict, tok_config: dict, ids: dict[str, int]) -> dict[str, int]:
    """bos/eos/unk/pad ids: tokenizer_config.json first (what the HF tokenizer uses), then config.json."""
    out: dict[str, int] = {}
    for kind in ("bos", "eos", "unk", "pad"):
        text = _token_text(tok_config.get(f"{kind}_token"))
        if text is not None and text in ids:
            out[kind] = ids[text]
    config_path = model_dir / "config.json"
    if config_path.is_file():
        config = _read_json(config_path)
        for kind in ("bos", "eos", "pad"):
            value = config.get(f"{kind}_token_id")
            if isinstance(value, list):  # e.g. Llama 3.1 lists several eos ids; the first is the main one
                value = value[0] if value else None
            if kind not in out and isinstance(value, int) and value >= 0:
                out[kind] = value
    unk = (tok.get("model") or {}).get("unk_token")
    if "unk" not in out and isinstance(unk, str) and unk in ids:
        out["unk"] = ids[unk]
    return out


def _adds_bos_eos(model_dir: Path, special: dict[str, int]) -> tuple[bool, bool]:
    """Whether encoding plain text adds bos/eos: asked of the tokenizer itself (its post-processor), not guessed."""
    from tokenizers import Tokenizer

    ids = Tokenizer.from_file(str(model_dir / "tokenizer.json")).encode("hello", add_special_tokens=True).ids
    add_bos = bool(ids) and "bos" in special and ids[0] == special["bos"]
    add_eos = len(ids) > 1 and "eos" in special and ids[-1] == special["eos"]
    return add_bos, add_eos


def _chat_template(model_dir: Path, tok_config: dict) -> str | None:
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    value = tok_config.get("chat_template")
    if isinstance(value, str):
        return value
    if isinstance(value, list):  # named templates: the default one is what HF applies
        for item in value:
            if item.get("name") == "default":
                return item.get("template")
    path = model_dir / "chat_template.json"
    if path.is_file():
        return _read_json(path).get("chat_template")
    return None


def load_vocab(model_dir: Path, n_vocab: int) -> GgufVocab:
    """Read the tokenizer of a HF model folder; `n_vocab` is the embedding's row count (tokens are padded to it)."""
    tok_path = model_dir / "tokenizer.json"
    if not tok_path.is_file():
        hint = "this exporter reads the fast tokenizer (tokenizer.json); load and re-save the tokenizer with transformers"
        if (model_dir / "tokenizer.model").is_file():
            hint = "only a SentencePiece tokenizer.model is present: " + hint
        raise InputError(f"{model_dir}: no tokenizer.json", hint=hint)
    tok = _read_json(tok_path)
    config_path = model_dir / "tokenizer_config.json"
    tok_config = _read_json(config_path) if config_path.is_file() else {}
    model = tok.get("model") or {}
    if model.get("type") != "BPE":
        raise UsageError(
            f"{tok_path}: tokenizer model {model.get('type')!r} is not supported (BPE only)",
            hint="set export.converter: llama.cpp to use llama.cpp's own converter",
        )

    ids: dict[str, int] = dict(model.get("vocab") or {})
    added = {a["id"]: a for a in tok.get("added_tokens") or []}
    for a in added.values():
        ids[a["content"]] = a["id"]
    size = max(n_vocab, max(ids.values()) + 1)
    if size > n_vocab:
        raise InputError(
            f"{tok_path}: the tokenizer has ids up to {size - 1} but the embedding has only {n_vocab} rows",
            hint="resize the model's embeddings to the tokenizer (model.resize_token_embeddings) and re-save",
        )
    tokens = [f"[PAD{i}]" for i in range(size)]
    types = [UNUSED] * size
    for text, i in ids.items():
        tokens[i] = text
        types[i] = NORMAL
    for i, a in added.items():
        types[i] = CONTROL if a.get("special") else USER_DEFINED

    special = _special_ids(model_dir, tok, tok_config, ids)
    add_bos, add_eos = _adds_bos_eos(model_dir, special)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    byte_level = any(
        s.get("type") == "ByteLevel"
        for s in [tok.get("pre_tokenizer") or {}, *((tok.get("pre_tokenizer") or {}).get("pretokenizers") or [])]
    )
    if byte_level:
        if any(" " in p for m in (model.get("merges") or []) if not isinstance(m, str) for p in m):
            raise UsageError(f"{tok_path}: merges containing spaces are not supported")
        vocab = GgufVocab("gpt2", pre_tokenizer_name(tok), tokens, types, merges=merges)
    elif model.get("byte_fallback"):
        vocab = _sentencepiece_bpe(tok, tokens, types, merges, special)
    else:
        raise UsageError(
            f"{tok_path}: BPE tokenizer that is neither byte-level nor byte-fallback (SentencePiece) is not supported",
            hint="set export.converter: llama.cpp to use llama.cpp's own converter",
        )
    vocab.special_ids = special
    vocab.add_bos, vocab.add_eos = add_bos, add_eos
    vocab.chat_template = _chat_template(model_dir, tok_config)
    _warn_bos_mismatch(vocab, tokens, model_dir)
    return vocab


def _warn_bos_mismatch(vocab: GgufVocab, tokens: list[str], model_dir: Path) -> None:
    """The GGUF's add_bos_token follows the tokenizer (what HF does to plain text). Deploy needs it to match the chat
    template, whose BOS llama.cpp must prepend itself: say so here, where it can still be fixed, not only at deploy."""
    bos_id = vocab.special_ids.get("bos")
    if not vocab.chat_template or bos_id is None or vocab.add_bos:
        return
    from llmforge.chat_templates import template_writes_bos
    from llmforge.errors import UsageError

    bos = tokens[bos_id]
    try:
        writes = template_writes_bos(vocab.chat_template, bos_token=bos)
    except UsageError:  # a template that refuses the probe: deploy will say what it makes of it
        return
    if writes:
        log.warning(
            "%s: the chat template starts with the BOS token %r but the tokenizer adds none to plain text, so the GGUF "
            "says add_bos_token=false and llama.cpp/Ollama will not prepend it (deploy ollama refuses such a file); "
            "make the tokenizer add its BOS (tokenizer.json post_processor) and export again", model_dir, bos,
        )


def _sentencepiece_bpe(tok: dict, tokens: list[str], types: list[int], merges: list[str], special: dict) -> GgufVocab:
    """Llama-2/Mistral style: llama.cpp's SPM tokenizer merges the adjacent pair whose result scores highest,
    so a token's score is minus the rank of the merge that creates it (HF applies merges in rank order)."""
    scores = [0.0] * len(tokens)
    index = {t: i for i, t in enumerate(tokens)}
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ", 1)
        i = index.get(left + right)
        if i is not None and scores[i] == 0.0:
            scores[i] = -float(rank + 1)
    for i, t in enumerate(tokens):
        if types[i] == NORMAL and re.fullmatch(r"<0x[0-9A-Fa-f]{2}>", t):
            types[i] = BYTE
    if "unk" in special:
        types[special["unk"]] = UNKNOWN
    norm = tok.get("normalizer") or {}
    norm_steps = norm.get("normalizers", [norm]) if norm.get("type") == "Sequence" else [norm]
    pre = tok.get("pre_tokenizer") or {}
    prepend = any(s.get("type") == "Prepend" and s.get("prepend") == "\u2581" for s in norm_steps) or (
        pre.get("type") == "Metaspace" and pre.get("prepend_scheme", "always") in ("always", "first")
    )
    return GgufVocab("llama", "default", tokens, types, scores=scores, add_space_prefix=prepend)


def add_to_writer(writer, vocab: GgufVocab) -> None:
    """Write the tokenizer keys into a gguf.GGUFWriter."""
    writer.add_tokenizer_model(vocab.model)
    if vocab.pre:
        writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    if vocab.merges:
        writer.add_token_merges(vocab.merges)
    for kind, tid in vocab.special_ids.items():
        getattr(writer, f"add_{kind}_token_id")(tid)
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(vocab.add_eos)
    if vocab.add_space_prefix is not None:
        writer.add_add_space_prefix(vocab.add_space_prefix)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)
