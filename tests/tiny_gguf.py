"""A tiny GGUF that llama.cpp runs and that answers like a fine-tuned chat model: a fixed reply, then its stop token.

Deploy tests need a model that really stops: an untrained tiny model never emits its end-of-turn token, so every
check would (rightly) fail. This one is a one-layer Llama whose attention and MLP write zeros into the residual
stream, so the logits depend only on the last token: a bigram table written into the embedding and output
matrices. After the generation prompt's last token it says REPLY (its tokens under the tiny tokenizer), then
<|im_end|>; after <|im_end|> it starts again with "\\n" (what a model that is not stopped does: it rambles on).
The tokenizer (tokens, merges, special ids, chat template) comes from the test tokenizer folder, as a real export
would write it.
"""

from __future__ import annotations

import json
from pathlib import Path

REPLY = "the keeper wrote"


def build_gguf(
    out_path: Path,
    tokenizer_dir: Path,
    *,
    reply: str = REPLY,
    chat_template: str | None = None,
    end_of_turn: str = "<|im_end|>",
    context_length: int = 256,
    f16: bool = False,
    learned_stop: bool = True,
    prompt: str | None = None,
) -> Path:
    """Write the bigram GGUF (f32, or f16 matrices); `chat_template` replaces the tokenizer's (None: keep its own).

    `learned_stop=False` makes a model that never learned its end-of-turn token (trained with it outside the loss
    mask): after REPLY it starts a new line and says REPLY again, forever.
    `prompt` is a rendered generation prompt the model will be asked with: the reply follows its last token, which
    for many real templates is not a newline (Mistral's "[/INST]", Llama 3's "\\n\\n"). Default: a newline.
    """
    import gguf
    import numpy as np
    from tokenizers import Tokenizer

    tokenizer_dir = Path(tokenizer_dir)
    tok_json = json.loads((tokenizer_dir / "tokenizer.json").read_text(encoding="utf-8"))
    tok_config = json.loads((tokenizer_dir / "tokenizer_config.json").read_text(encoding="utf-8"))
    if chat_template is None:
        chat_template = (tokenizer_dir / "chat_template.jinja").read_text(encoding="utf-8")
    tokenizer = Tokenizer.from_file(str(tokenizer_dir / "tokenizer.json"))

    vocab: dict[str, int] = dict(tok_json["model"]["vocab"])
    special = {t["content"]: t["id"] for t in tok_json["added_tokens"]}
    vocab.update(special)
    n_vocab = max(vocab.values()) + 1
    tokens = [""] * n_vocab
    for text, idx in vocab.items():
        tokens[idx] = text
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok_json["model"]["merges"]]

    # The bigram chain: prompt end (its last token) -> reply tokens -> end of turn -> prompt end -> ...
    newline = tokenizer.encode("\n" if prompt is None else prompt, add_special_tokens=False).ids
    reply_ids = tokenizer.encode(reply, add_special_tokens=False).ids  # no BOS a post-processor may add
    eot = vocab[end_of_turn]
    chain = newline[-1:] + reply_ids + ([eot] if learned_stop else [])
    if len(set(chain)) != len(chain):
        raise ValueError(f"reply {reply!r} repeats a token; the bigram model needs distinct tokens")
    hidden = 64
    if len(chain) + 1 > hidden:
        raise ValueError("reply too long for the tiny model")
    next_of = {cur: nxt for cur, nxt in zip(chain, chain[1:] + chain[:1])}

    embed = np.zeros((n_vocab, hidden), dtype=np.float32)
    embed[:, 0] = 1.0  # every other token: state 0, which leads to end of turn (or a new line)
    output = np.zeros((n_vocab, hidden), dtype=np.float32)
    output[eot if learned_stop else chain[0], 0] = 10.0
    for state, token in enumerate(chain, start=1):
        embed[token] = 0.0
        embed[token, state] = 1.0
        output[next_of[token], state] = 10.0

    rng = np.random.default_rng(0)
    n_head, n_ff = 4, 64
    writer = gguf.GGUFWriter(str(out_path), "llama")
    writer.add_name("tiny-bigram")
    writer.add_context_length(context_length)
    writer.add_embedding_length(hidden)
    writer.add_block_count(1)
    writer.add_feed_forward_length(n_ff)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_head)
    writer.add_layer_norm_rms_eps(1e-6)
    writer.add_rope_freq_base(10000.0)
    writer.add_rope_dimension_count(hidden // n_head)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    writer.add_eos_token_id(vocab[tok_config["eos_token"]])
    if tok_config.get("pad_token") in vocab:
        writer.add_pad_token_id(vocab[tok_config["pad_token"]])
    bos = tok_config.get("bos_token")
    if bos in vocab:  # as the export writes it: BOS id, and add_bos from what the tokenizer does to plain text
        writer.add_bos_token_id(vocab[bos])
    writer.add_add_bos_token(bos in vocab and tokenizer.encode("hello").ids[:1] == [vocab[bos]])
    writer.add_chat_template(chat_template)

    matrix = np.float16 if f16 else np.float32
    small = lambda *shape: (rng.standard_normal(shape) * 0.02).astype(matrix)  # noqa: E731
    embed, output = embed.astype(matrix), output.astype(matrix)
    writer.add_tensor("token_embd.weight", embed)
    writer.add_tensor("output_norm.weight", np.ones(hidden, dtype=np.float32))
    writer.add_tensor("output.weight", output)
    writer.add_tensor("blk.0.attn_norm.weight", np.ones(hidden, dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight", small(hidden, hidden))
    writer.add_tensor("blk.0.attn_k.weight", small(hidden, hidden))
    writer.add_tensor("blk.0.attn_v.weight", small(hidden, hidden))
    writer.add_tensor("blk.0.attn_output.weight", np.zeros((hidden, hidden), dtype=matrix))
    writer.add_tensor("blk.0.ffn_norm.weight", np.ones(hidden, dtype=np.float32))
    writer.add_tensor("blk.0.ffn_gate.weight", small(n_ff, hidden))
    writer.add_tensor("blk.0.ffn_up.weight", small(n_ff, hidden))
    writer.add_tensor("blk.0.ffn_down.weight", np.zeros((hidden, n_ff), dtype=matrix))
    out_path.parent.mkdir(parents=True, exist_ok=True)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path
