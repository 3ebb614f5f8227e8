"""Fine-tuning tiny models that carry real upstream chat templates and their special tokens: `llmforge train`
finds the assistant's tokens (by markers, TRL's training template, incremental renders or per-turn prefixes),
trains each answer with its end-of-turn token on the real ids, and records how the mask was made."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import upstream_templates  # noqa: E402
from tiny_models import tiny_chat_model  # noqa: E402
from train_data import workspace_with  # noqa: E402

from llmforge import checkpoints  # noqa: E402
from llmforge.workspace import Workspace  # noqa: E402

# corpus file -> how its loss mask is made (chat_spans.HOW) and whether the template writes today's date
EXPECTED = {
    "Qwen-Qwen2.5-7B-Instruct": ("trl training template", False),
    "meta-llama-Llama-3.2-3B-Instruct": ("incremental render", True),
    "Mistral-Small-3.2-24B-Instruct-2506": ("incremental render", True),
    "google-gemma-3-it": ("trl training template", False),
    "HuggingFaceTB-SmolLM3-3B": ("incremental render", False),
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": ("per-turn prefix", False),
}


def conversations(n: int = 6) -> list[dict]:
    return [
        {"messages": [{"role": "system", "content": "Answer briefly."},
                      {"role": "user", "content": f"What is {i} plus {i}?"},
                      {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
                      {"role": "user", "content": "And doubled again?"},
                      {"role": "assistant", "content": f"Doubled again it is {4 * i}."}]}
        for i in range(n)
    ]  # fmt: skip


@pytest.fixture(scope="module")
def chat_models(tmp_path_factory):
    built: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in built:
            built[name] = tiny_chat_model(name, tmp_path_factory.mktemp(name[:20]))
        return built[name]

    return get


@pytest.mark.parametrize("name", list(EXPECTED))
def test_lora_trains_each_answer_and_its_end_of_turn_token(name, chat_models, tmp_path):
    from typer.testing import CliRunner

    from llmforge.cli.app import app
    from llmforge.training import template as template_mod

    model = chat_models(name)
    records = conversations()
    ws = Workspace(workspace_with(tmp_path / "ws", records))
    args = ["train", "--method", "lora", "--json", "-s", f"model.name={model}", "-s", f"project.workdir={ws.root}",
            "-s", "train.max_steps=10", "-s", "train.logging_steps=5", "-s", "train.run_name=r",
            "-s", "train.save_every=100"]  # fmt: skip
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    manifest = json.loads(ws.run_manifest("r").read_text())
    how, dated = EXPECTED[name]
    assert manifest["loss_mask"] == how and manifest["steps"] == 10
    assert manifest["end_of_turn_checked"] == len(records)
    assert bool(manifest["chat_template_date"]) == dated
    assert manifest["records_split_per_turn"] == (len(records) if how == "per-turn prefix" else 0)

    # The trained tokens, on the real ids: each answer followed by the end-of-turn token, nothing else.
    tokenizer = checkpoints.load_tokenizer(model)
    chosen = template_mod.resolve(tokenizer)
    assert chosen.how == how
    saved = (ws.run_dir("r") / "chat_template.jinja").read_text(encoding="utf-8")
    # the run ships the model's own template, also where a marked twin (TRL's, a family's) found the loss spans
    assert saved == upstream_templates.read(name) == chosen.saved_text
    eot = tokenizer.convert_tokens_to_ids(chosen.end_of_turn[0])
    encoded = template_mod.encode(tokenizer, chosen, records[:1])
    trained = []
    for row in encoded.rows:
        run: list[int] = []
        for token, masked in zip(row["input_ids"], row["assistant_masks"]):
            if masked:
                run.append(token)
            elif run:
                trained.append(run)
                run = []
        if run:
            trained.append(run)
    answers = [m["content"] for m in records[0]["messages"] if m["role"] == "assistant"]
    assert len(trained) == len(answers)
    for run, answer in zip(trained, answers):
        assert run[-1] == eot and run.count(eot) == 1
        text = tokenizer.decode(run)
        # TRL's Qwen2.5 template marks the newline that ends the "<|im_start|>assistant" header too
        assert text.lstrip("\n") == answer + chosen.end_of_turn[0], text


def test_the_plan_says_how_the_mask_is_made(chat_models, tmp_path):
    from typer.testing import CliRunner

    from llmforge.cli.app import app

    model = chat_models("meta-llama-Llama-3.2-3B-Instruct")
    ws = Workspace(workspace_with(tmp_path / "ws", conversations(4)))
    base = ["train", "--method", "lora", "--dry-run", "-s", f"model.name={model}", "-s", f"project.workdir={ws.root}"]
    plan = json.loads(CliRunner().invoke(app, [*base, "--json"]).stdout)
    assert plan["loss_mask"] == "incremental render" and plan["end_of_turn_checked"] == 4
    assert len(plan["chat_template_date"]) == 10  # YYYY-mm-dd: the run's start, pinned for every render
    shown = CliRunner().invoke(app, base)
    assert shown.exit_code == 0 and "loss mask" in shown.output and "incremental render" in shown.output


def test_a_template_that_refuses_system_messages_trains_without_them_and_names_the_record(chat_models, tmp_path):
    from llmforge.config import load_config
    from llmforge.errors import UsageError
    from llmforge.training import train

    model = chat_models("google-gemma-2-2b-it")
    records = conversations(4)
    ws = Workspace(workspace_with(tmp_path / "ws", records))
    cfg = load_config(None, [], {"model.name": str(model), "train.method": "lora", "train.max_steps": 2}).config
    with pytest.raises(UsageError, match=r"training record 1: .*System role not supported"):
        train(cfg.model, cfg.train, ws)
    no_system = [{"messages": r["messages"][1:]} for r in records]
    ws2 = Workspace(workspace_with(tmp_path / "ws2", no_system))
    result = train(cfg.model, cfg.train, ws2)
    manifest = json.loads(Path(result.manifest).read_text())
    assert manifest["loss_mask"] == "family template" and manifest["chat_template_family"] == "gemma"
