"""The data stage with a real tokenizer: preview's trained/masked spans, token-length filters, and prepared splits
that TRL trains on as they are."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from llmforge.config.data import DataConfig
from llmforge.config.model import ModelConfig
from llmforge.data import prepare, preview, stats
from llmforge.errors import UsageError
from llmforge.workspace import Workspace

CHAT = [{"role": "user", "content": "What colour is the sky?"}, {"role": "assistant", "content": "The sky is blue."}]
LONG = [
    {"role": "user", "content": "Tell me a long story."},
    {"role": "assistant", "content": " ".join(["Once upon a time"] * 40)},
]


def write(path: str, rows: list[dict]) -> str:
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def load(tokenizer_dir: Path):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast.from_pretrained(tokenizer_dir)


def texts(rendering, trained: bool) -> str:
    return "".join(s["text"] for s in rendering.segments if s["trained"] is trained)


def test_preview_shows_trained_and_masked_spans(tiny_tokenizer_dir, tmp_path):
    write("chat.jsonl", [{"messages": CHAT}])
    result = preview("chat.jsonl", ModelConfig(name=str(tiny_tokenizer_dir)), Workspace(Path("work")), n=3)
    assert result.mask_source == "tokenizer markers, template: tokenizer (chatml)"
    (rendering,) = result.examples[0].renderings
    assert texts(rendering, True) == "The sky is blue.<|im_end|>"  # the answer and its end-of-turn token
    assert texts(rendering, False) == "<|im_start|>user\nWhat colour is the sky?<|im_end|>\n<|im_start|>assistant\n\n"
    tok = load(tiny_tokenizer_dir)
    ids = tok.apply_chat_template(CHAT, tokenize=True, return_dict=True)["input_ids"]
    assert rendering.tokens == len(ids)
    assert rendering.trained_tokens == len(tok("The sky is blue.<|im_end|>")["input_ids"])


def _tokenizer_with_template(tiny_tokenizer_dir: Path, folder: Path, template: str) -> Path:
    shutil.copytree(tiny_tokenizer_dir, folder)
    (folder / "chat_template.jinja").write_text(template)
    return folder


def test_preview_uses_the_template_training_will_use(tiny_tokenizer_dir, tmp_path):
    """A ChatML template without {% generation %} markers: training uses the ChatML family's marked twin."""
    template = (tiny_tokenizer_dir / "chat_template.jinja").read_text()
    stripped = template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    assert stripped != template
    plain = _tokenizer_with_template(tiny_tokenizer_dir, tmp_path / "plain-tok", stripped)
    write("chat.jsonl", [{"messages": CHAT}])
    result = preview("chat.jsonl", ModelConfig(name=str(plain)), Workspace(Path("work")))
    assert result.mask_source == "family template, template: family (chatml)"
    (rendering,) = result.examples[0].renderings
    assert texts(rendering, True) == "The sky is blue.<|im_end|>"


def test_unknown_template_without_markers_needs_a_family(tiny_tokenizer_dir, tmp_path):
    odd = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}"
    folder = _tokenizer_with_template(tiny_tokenizer_dir, tmp_path / "odd-tok", odd)
    write("chat.jsonl", [{"messages": CHAT}])
    with pytest.raises(UsageError) as info:
        preview("chat.jsonl", ModelConfig(name=str(folder)), Workspace(Path("work")))
    assert "model.chat_template" in info.value.hint
    configured = preview("chat.jsonl", ModelConfig(name=str(folder), chat_template="chatml"), Workspace(Path("w2")))
    assert configured.mask_source == "family template, template: configured (chatml)"
    (rendering,) = configured.examples[0].renderings
    assert texts(rendering, True) == "The sky is blue.<|im_end|>"


def test_incremental_render_mask_matches_generation_markers(tiny_tokenizer_dir):
    """Without markers, rendering prefixes marks exactly the tokens the markers do: each answer and its end-of-turn
    token, not the newline after it nor the next turn's header."""
    from llmforge import chat_spans

    tok = load(tiny_tokenizer_dir)
    turns = [*CHAT, {"role": "user", "content": "And at night?"}, {"role": "assistant", "content": "Black."}]
    [(ids, marked, _)] = chat_spans.encode(tok, chat_spans.verdict_for(tok), turns)
    stripped = tok.chat_template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    incremental = chat_spans.Verdict(True, chat_spans.INCREMENTAL, "", stripped, ("<|im_end|>",))
    [(ids2, diffed, turns_trained)] = chat_spans.encode(tok, incremental, turns)
    assert ids == ids2 and diffed == marked and turns_trained == 2
    assert tok.decode([t for t, m in zip(ids, diffed) if m]) == "The sky is blue.<|im_end|>Black.<|im_end|>"


def test_preview_shows_each_assistant_turn_of_a_reasoning_template(tmp_path):
    """Qwen3's template drops earlier <think> blocks: preview shows one sample per assistant turn, as train makes."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from tiny_models import tiny_chat_model

    model = tiny_chat_model("Qwen-Qwen3-0.6B", tmp_path / "qwen3")
    turns = [*CHAT, {"role": "user", "content": "And at night?"}, {"role": "assistant", "content": "Black."}]
    write("chat.jsonl", [{"messages": turns}])
    result = preview("chat.jsonl", ModelConfig(name=str(model)), Workspace(Path("work")))
    assert result.mask_source == "per-turn prefix, template: tokenizer"
    first, second = result.examples[0].renderings
    assert (first.title, second.title) == ("messages, assistant turn 1", "messages, assistant turn 2")
    assert texts(first, True) == "<think>\n\n</think>\n\nThe sky is blue.<|im_end|>"
    assert texts(second, True) == "<think>\n\n</think>\n\nBlack.<|im_end|>"
    assert "The sky is blue.<|im_end|>" in texts(second, False)  # the earlier answer, as history: not trained

def test_preview_of_preference_and_text(tiny_tokenizer_dir, tmp_path):
    write("pref.jsonl", [{"prompt": "What colour is the sky?", "chosen": "Blue.", "rejected": "Green."}])
    result = preview("pref.jsonl", ModelConfig(name=str(tiny_tokenizer_dir)), Workspace(Path("work")))
    chosen, rejected = result.examples[0].renderings
    assert (chosen.title, texts(chosen, True)) == ("chosen", "Blue.<|im_end|>")
    assert (rejected.title, texts(rejected, True)) == ("rejected", "Green.<|im_end|>")
    write("raw.jsonl", [{"text": "Plain text for pretraining."}])
    raw = preview("raw.jsonl", ModelConfig(name=str(tiny_tokenizer_dir)), Workspace(Path("work2")))
    (rendering,) = raw.examples[0].renderings
    assert texts(rendering, True) == "Plain text for pretraining." and rendering.trained_tokens == rendering.tokens


def test_lengths_are_tokens_of_the_rendered_template(tiny_tokenizer_dir, tmp_path):
    tok = load(tiny_tokenizer_dir)
    short = len(tok.apply_chat_template(CHAT, tokenize=True, return_dict=True)["input_ids"])
    long = len(tok.apply_chat_template(LONG, tokenize=True, return_dict=True)["input_ids"])
    write("in.jsonl", [{"messages": CHAT}, {"messages": LONG}])
    ws = Workspace(Path("work"))
    model = ModelConfig(name=str(tiny_tokenizer_dir))
    data = DataConfig(inputs=["in.jsonl"], filter={"max_tokens": long - 1}, split={"train": 1, "val": 0, "test": 0})
    report = prepare(data, model, ws)
    assert report["length"]["unit"] == "tokens"
    assert report["length"]["max"] == short
    assert report["filtered"] == {"too long": 1}
    assert report["filtered_examples"] == [f"in.jsonl:2: too long: {long} tokens (max {long - 1})"]
    result = stats(None, model, ws)
    assert result.length["unit"] == "tokens" and result.length["max"] == short


def test_prepared_chat_split_trains_with_trl_assistant_only_loss(tiny_llama_dir, tmp_path):
    """The contract with `train`: TRL's SFTTrainer takes train.jsonl as it is, with assistant-only loss."""
    rows = [{"messages": [{"role": "user", "content": f"Question {i}?"}, {"role": "assistant", "content": f"Answer {i}."}]}
            for i in range(12)]  # fmt: skip
    ws = Workspace(Path("work"))
    prepare(DataConfig(inputs=[write("in.jsonl", rows)]), ModelConfig(name=str(tiny_llama_dir)), ws)
    from datasets import load_dataset
    from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
    from trl import SFTConfig, SFTTrainer

    dataset = load_dataset("json", data_files=str(ws.split_file("train")), split="train")
    assert dataset.column_names == ["messages"]
    trainer = SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(tiny_llama_dir),
        processing_class=PreTrainedTokenizerFast.from_pretrained(tiny_llama_dir),
        train_dataset=dataset,
        args=SFTConfig(output_dir=str(tmp_path / "out"), max_steps=1, per_device_train_batch_size=2, use_cpu=True,
                       bf16=False, assistant_only_loss=True, report_to=[], save_strategy="no", logging_steps=1),
    )  # fmt: skip
    batch = next(iter(trainer.get_train_dataloader()))
    labels = batch["labels"][0].tolist()
    ids = batch["input_ids"][0].tolist()
    trained = trainer.processing_class.decode([t for t, lab in zip(ids, labels) if lab != -100])
    assert trained.startswith("Answer ") and trained.endswith("<|im_end|>")
    assert trainer.train().training_loss > 0


@pytest.mark.parametrize("split", ["train"])
def test_prepared_preference_split_is_trl_conversational(tiny_tokenizer_dir, tmp_path, split):
    rows = [{"prompt": f"Question {i}?", "chosen": f"Good {i}.", "rejected": f"Bad {i}."} for i in range(5)]
    ws = Workspace(Path("work"))
    prepare(DataConfig(inputs=[write("pref.jsonl", rows)]), ModelConfig(), ws)
    from datasets import load_dataset
    from trl.data_utils import apply_chat_template, is_conversational

    dataset = load_dataset("json", data_files=str(ws.split_file(split)), split="train")
    assert is_conversational(dataset[0])
    rendered = apply_chat_template(dataset[0], load(tiny_tokenizer_dir))
    assert rendered["prompt"].endswith("<|im_start|>assistant\n")
    assert rendered["chosen"].startswith("Good") and rendered["rejected"].startswith("Bad")


def test_preview_and_stats_commands(tiny_tokenizer_dir, tmp_path):
    from typer.testing import CliRunner

    from llmforge.cli.app import app

    write("chat.jsonl", [{"messages": CHAT}, {"messages": LONG}])
    runner = CliRunner()
    shown = runner.invoke(app, ["data", "preview", "chat.jsonl", "-n", "1", "-s", f"model.name={tiny_tokenizer_dir}"])
    assert shown.exit_code == 0, shown.output
    assert "chat.jsonl:1 messages" in shown.output and "chat.jsonl:2" not in shown.output
    trained = len(load(tiny_tokenizer_dir)("The sky is blue.<|im_end|>")["input_ids"])
    assert "The sky is blue." in shown.output and f" tokens, {trained} trained" in shown.output
    as_json = runner.invoke(app, ["data", "preview", "chat.jsonl", "-s", f"model.name={tiny_tokenizer_dir}", "--json"])
    examples = json.loads(as_json.output)["examples"]
    assert len(examples) == 2 and examples[1]["renderings"][0]["trained_tokens"] > 100
    stats = runner.invoke(app, ["data", "stats", "chat.jsonl", "-s", f"model.name={tiny_tokenizer_dir}", "--json"])
    assert json.loads(stats.output)["length"]["unit"] == "tokens"
