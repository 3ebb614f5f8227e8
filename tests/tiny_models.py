"""Build tiny models locally for tests: a byte-level BPE tokenizer trained on tests/fixtures/corpus.txt with ChatML
special tokens and a chat template with {% generation %} markers, and tiny Llama / Qwen2 models saved as safetensors.
"""

from __future__ import annotations

from pathlib import Path

from llmforge.training.scratch import CHATML_TEMPLATE, SPECIAL_TOKENS  # noqa: F401 (re-exported for tests)

FIXTURES = Path(__file__).parent / "fixtures"
CORPUS = FIXTURES / "corpus.txt"


def build_tokenizer(out_dir: Path, vocab_size: int = 512, corpus: Path = CORPUS) -> Path:
    from llmforge import checkpoints
    from llmforge.training.scratch import train_tokenizer

    fast = train_tokenizer(corpus.read_text(encoding="utf-8").splitlines(), vocab_size)
    checkpoints.save_tokenizer(fast, out_dir)
    return out_dir


def load_tokenizer(path: Path):
    """Load a test tokenizer exactly as saved (AutoTokenizer may swap in a model-specific class)."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(path)


def build_model(
    out_dir: Path,
    tokenizer_dir: Path,
    architecture: str = "llama",
    hidden_size: int = 64,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    intermediate_size: int | None = None,
    rope_theta: float = 50000.0,
    tie_word_embeddings: bool | None = None,
    seed: int = 0,
) -> Path:
    from llmforge.training.scratch import build_model as build
    from llmforge.training.scratch import save_base_model

    tok = load_tokenizer(tokenizer_dir)
    model = build(
        tok,
        architecture,
        hidden_size=hidden_size,
        layers=layers,
        heads=heads,
        kv_heads=kv_heads,
        intermediate_size=intermediate_size or hidden_size * 2,
        max_position_embeddings=512,
        rope_theta=rope_theta,
        tie_word_embeddings=tie_word_embeddings,
        seed=seed,
    )
    return save_base_model(model, tok, Path(out_dir))


def reference_perplexity(model_dir: Path, texts: list[str]) -> float:
    """Perplexity over plain texts computed independently of llmforge: transformers' own loss, on the CPU, in fp32,
    weighted by the number of predicted tokens of each text."""
    import math

    import torch
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([tok(text)["input_ids"]])
        with torch.no_grad():
            total += model(input_ids=ids, labels=ids).loss.item() * (ids.shape[1] - 1)
        count += ids.shape[1] - 1
    return math.exp(total / count)


# --- tiny models carrying a real upstream chat template -----------------------------------------------------------

# A conversation every corpus template renders (gemma 2 without the system message): the special tokens it writes
# are the ones a tiny tokenizer must know as single tokens.
_TOKEN_PROBE = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello"},
    {"role": "user", "content": "Bye"},
]
# Chat-template special tokens: <|...|>, <｜...｜>, <start_of_turn>, </s>, <think> ... and [INST]-style markers.
_SPECIAL_RE = r"<[^<>\s]{1,60}>|\[/?[A-Z_]{2,30}\]"


def template_special_tokens(template: str, bos_token: str | None, eos_token: str | None) -> list[str]:
    """BOS, EOS and every special-looking token the template writes around a short conversation (with and without
    the generation prompt), in first-seen order."""
    import re

    from llmforge import chat_templates
    from llmforge.errors import UsageError

    texts = []
    for messages in (_TOKEN_PROBE, _TOKEN_PROBE[1:]):
        for conversation, prompt in ((messages, True), (messages[:-1], False)):
            try:
                texts.append(chat_templates.render(template, conversation, bos_token=bos_token, eos_token=eos_token,
                                                   add_generation_prompt=prompt))  # fmt: skip
            except UsageError:
                continue
    found = [t for t in (bos_token, eos_token) if t]
    for text in texts:
        for token in re.findall(_SPECIAL_RE, text):
            if token not in found:
                found.append(token)
    return found


def tiny_chat_model(
    corpus_name: str,
    out_dir: Path,
    architecture: str = "llama",
    vocab_size: int = 400,
    hidden_size: int = 32,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
) -> Path:
    """A tiny Llama (or Qwen2) with a real upstream chat template (tests/upstream_templates.CORPUS[corpus_name]) and
    the template's own special tokens: a byte-level BPE trained on tests/fixtures/corpus.txt, with the model's
    BOS/EOS and every end-of-turn / header token the template writes added as special tokens (BOS also added to
    plain text when the template writes it, as the real tokenizers do), and the real template as chat_template. Saved as a complete model folder (config, safetensors, tokenizer, template)."""
    import upstream_templates
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from llmforge import chat_templates
    from llmforge.training.scratch import build_model as build
    from llmforge.training.scratch import save_base_model

    _model, bos, eos, _source = upstream_templates.CORPUS[corpus_name]
    template = upstream_templates.read(corpus_name)
    specials = template_special_tokens(template, bos, eos)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(
        CORPUS.read_text(encoding="utf-8").splitlines(),
        trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, min_frequency=1, show_progress=False,
                            initial_alphabet=pre_tokenizers.ByteLevel.alphabet()),
    )  # fmt: skip
    if bos and chat_templates.template_writes_bos(template, bos_token=bos, eos_token=eos):
        # The real tokenizers of these models (Llama 3, Gemma, Mistral, R1 distills, Aya) add BOS to plain text
        # too; export reads add_bos_token from that, and deploy needs it: Ollama's TEMPLATE leaves BOS to llama.cpp.
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
        )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=bos,
        eos_token=eos,
        pad_token=eos,
        additional_special_tokens=[t for t in specials if t not in (bos, eos)],
    )
    fast.chat_template = template
    model = build(fast, architecture, hidden_size=hidden_size, layers=layers, heads=heads, kv_heads=heads,
                  intermediate_size=hidden_size * 2, max_position_embeddings=1024, seed=seed)  # fmt: skip
    return save_base_model(model, fast, Path(out_dir))
