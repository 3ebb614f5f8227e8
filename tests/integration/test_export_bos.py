"""A chat template that writes BOS on a tokenizer that adds none to plain text: the GGUF would say add_bos_token=false
and llama.cpp/Ollama would never prepend the BOS training saw. Export says so when it reads the tokenizer."""

from __future__ import annotations

import json
import logging

from tiny_models import tiny_chat_model

from llmforge.export.gguf_vocab import load_vocab


def test_export_warns_when_the_template_writes_bos_but_the_tokenizer_adds_none(tmp_path, caplog):
    model = tiny_chat_model("meta-llama-Llama-3.2-3B-Instruct", tmp_path / "m")
    n_vocab = json.loads((model / "config.json").read_text())["vocab_size"]
    with caplog.at_level(logging.WARNING, logger="llmforge.export.gguf_vocab"):
        assert load_vocab(model, n_vocab).add_bos
    assert "add_bos_token=false" not in caplog.text

    tok = json.loads((model / "tokenizer.json").read_text())
    tok["post_processor"] = None  # the tokenizer no longer adds <|begin_of_text|> to plain text
    (model / "tokenizer.json").write_text(json.dumps(tok))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="llmforge.export.gguf_vocab"):
        assert not load_vocab(model, n_vocab).add_bos
    assert "starts with the BOS token '<|begin_of_text|>'" in caplog.text and "add_bos_token=false" in caplog.text
