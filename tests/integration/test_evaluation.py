"""Evaluation on real tiny models: perplexity equals exp(mean NLL) computed independently, a LoRA adapter trained
here on memorised answers beats its base, dead targets fail alone, reruns hit the cache, and GGUF perplexity
(llama.cpp's logits) matches HF's."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from tiny_models import load_tokenizer, reference_perplexity
from transformers import AutoModelForCausalLM

from llmforge import registry
from llmforge.config.eval import EvalConfig
from llmforge.config.model import ModelConfig
from llmforge.evaluation import evaluate
from llmforge.workspace import Workspace

QA = [
    ("What colour is the lighthouse?", "Red and white."),
    ("Which days does the ferry call?", "Mondays and Thursdays."),
    ("How many litres does a 12 hour lamp use?", "About 3 litres."),
    ("Who keeps the logbook?", "The keeper of Gull Point."),
    ("What does the keeper count?", "The ships that pass."),
    ("When does she write about the stars?", "On calm nights."),
    ("What needs her on rough nights?", "The lamp."),
    ("Where do ships call?", "At the harbour."),
]
MULTI_TURN = {"messages": [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "Who keeps the logbook?"},
    {"role": "assistant", "content": "The keeper of Gull Point."},
    {"role": "user", "content": "Where do ships call?"},
    {"role": "assistant", "content": "At the harbour."},
]}
RUN = "lora-memorised"


def conversation(q: str, a: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": q}, {"role": "assistant", "content": a}]


def train_lora(base_dir: Path, out_dir: Path, steps: int = 200) -> list[dict]:
    """A LoRA adapter trained with peft directly (not our train stage) until it answers QA from memory."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    tok = load_tokenizer(base_dir)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", lora_dropout=0.0))
    rows = [tok.apply_chat_template(conversation(q, a), tokenize=True, return_dict=True,
                                    return_assistant_tokens_mask=True) for q, a in QA]
    width = max(len(r["input_ids"]) for r in rows)
    ids = torch.full((len(rows), width), tok.pad_token_id)
    labels = torch.full((len(rows), width), -100)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        ids[i, :n] = torch.tensor(r["input_ids"])
        attention[i, :n] = 1
        labels[i, :n] = torch.tensor([t if m else -100 for t, m in zip(r["input_ids"], r["assistant_masks"])])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    metrics = []
    model.train()
    for step in range(1, steps + 1):
        loss = model(input_ids=ids, attention_mask=attention, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 20 == 0:
            row = {"step": step, "loss": loss.item(), "learning_rate": 3e-3}
            if step % 100 == 0:
                row["eval_loss"] = loss.item()
            metrics.append(row)
    model.save_pretrained(out_dir)
    return metrics


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, tiny_llama_dir) -> Workspace:
    ws = Workspace(tmp_path_factory.mktemp("eval-ws"))
    ws.data_dir.mkdir(parents=True)
    ws.split_file("test").write_text("".join(json.dumps({"messages": conversation(q, a)}) + "\n" for q, a in QA))
    metrics = train_lora(tiny_llama_dir, ws.adapter_dir(RUN))
    ws.metrics_file(RUN).write_text("".join(json.dumps(r) + "\n" for r in metrics))
    ws.run_manifest(RUN).write_text(json.dumps({"base_model": str(tiny_llama_dir), "finished_at": "2026-11-22T04:00"}))
    return ws


def config(**kw) -> EvalConfig:
    kw.setdefault("max_new_tokens", 16)
    kw.setdefault("bootstrap", 300)
    return EvalConfig(**kw)


def independent_nll(model_dir: Path, records: list[list[dict[str, str]]]) -> tuple[float, int]:
    """Sum of NLL over assistant tokens and their count, from transformers' own loss with labels, where the
    assistant spans come from rendering prefixes (not from the generation markers our code uses)."""
    tok = load_tokenizer(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0
    for messages in records:
        ids = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
        labels = [-100] * len(ids)
        for j, m in enumerate(messages):
            if m["role"] != "assistant":
                continue
            start = len(tok.apply_chat_template(messages[:j], tokenize=True, return_dict=True,
                                                add_generation_prompt=True)["input_ids"])
            end = len(tok.apply_chat_template(messages[: j + 1], tokenize=True, return_dict=True)["input_ids"]) - 1
            assert tok.decode(ids[start:end]) == m["content"] + "<|im_end|>"  # content and end of turn, no newline
            labels[start:end] = ids[start:end]
        n = sum(1 for t in labels[1:] if t != -100)
        with torch.no_grad():
            loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([labels])).loss.item()
        total += loss * n
        count += n
    return total, count


def test_perplexity_is_exp_of_mean_nll_over_assistant_tokens(workspace, tiny_llama_dir, tmp_path):
    data = tmp_path / "test.jsonl"
    records = [conversation(q, a) for q, a in QA[:3]] + [MULTI_TURN["messages"]]
    data.write_text("".join(json.dumps({"messages": r}) + "\n" for r in records))
    result = evaluate(ModelConfig(name=str(tiny_llama_dir)), config(metrics=["perplexity"], data=str(data)),
                      workspace, targets="base")
    nll, count = independent_nll(tiny_llama_dir, records)
    metrics = result.report["metrics"]["base"]
    assert metrics["loss"] == pytest.approx(nll / count, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)
    assert metrics["exact_match"] is None  # generation was not asked for
    assert result.report["targets"][0]["mask"] == "tokenizer markers"


def test_lora_run_beats_base_and_dead_targets_fail_alone(workspace, tiny_llama_dir, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:9")
    result = evaluate(ModelConfig(name=str(tiny_llama_dir)), config(), workspace,
                      compare="base,run,http://127.0.0.1:9,ollama:missing")
    report = result.report
    assert result.exit_code == 1 and set(result.failed) == {"http://127.0.0.1:9", "ollama:missing"}
    assert "cannot reach http://127.0.0.1:9" in report["failed"]["http://127.0.0.1:9"]["error"]
    assert "cannot reach Ollama at http://127.0.0.1:9" in report["failed"]["ollama:missing"]["error"]
    base, run = report["metrics"]["base"], report["metrics"][f"run:{RUN}"]
    assert run["exact_match"] == 1.0 and base["exact_match"] == 0.0
    assert run["f1"] > base["f1"] and run["bleu"] > base["bleu"] and run["chrf"] > base["chrf"]
    assert run["perplexity"] < base["perplexity"]
    delta = report["deltas"][f"run:{RUN}"]["exact_match"]
    assert delta["delta"] == 1.0 and delta["low"] > 0
    assert report["deltas"][f"run:{RUN}"]["perplexity"]["high"] < 0
    for key in ("perplexity", "loss", "bleu", "rouge1", "rouge2", "rougeL", "chrf", "exact_match", "f1"):
        assert run[key] is not None
    folder = result.folder
    assert {"report.md", "report.json", "metrics.png", "loss_curves.png", "per_example.png", "predictions.jsonl",
            "manifest.json", "config.yaml"} <= {p.name for p in folder.iterdir()}
    assert report["run"] == RUN
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["inputs"][f"run:{RUN} adapter"]["sha256"] and manifest["inputs"]["data"]["sha256"]
    entry = registry.find(workspace.registry_file, f"eval-{folder.name}")
    assert entry["kind"] == "eval" and entry["parent"] == RUN
    assert entry["metrics_of"] == f"run:{RUN}" and entry["metrics"]["exact_match"] == 1.0
    preds = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    assert [p["targets"][f"run:{RUN}"]["prediction"] for p in preds] == [a for _, a in QA]

    # the rerun generates nothing: every generation comes from the cache, and the numbers are the same
    again = evaluate(ModelConfig(name=str(tiny_llama_dir)), config(), workspace, compare="base,run")
    assert [(t["generated"], t["cached"]) for t in again.report["targets"]] == [(0, len(QA)), (0, len(QA))]
    assert again.report["metrics"]["base"]["bleu"] == base["bleu"]
    assert again.report["metrics"][f"run:{RUN}"]["exact_match"] == 1.0


@pytest.fixture(scope="module")
def export_gguf():
    # GGUF targets are scored through llama.cpp's own logits: without llama-cpp-python there is nothing to compare
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: GGUF targets cannot be evaluated")
    from llmforge.export import export_gguf

    return export_gguf


def test_gguf_of_the_run_matches_it(workspace, tiny_llama_dir, export_gguf):
    """The export stage merges the LoRA run and writes f16 and q8_0 GGUFs; through llama.cpp's own logits their
    perplexity matches the HF run's, and they still answer the memorised questions."""
    from llmforge.config.export import ExportConfig

    model = ModelConfig(name=str(tiny_llama_dir))
    export_gguf(model, ExportConfig(quant=["f16", "q8_0"], verify=False), workspace, RUN)
    result = evaluate(model, config(), workspace, compare="run,gguf:f16,gguf:q8_0")
    assert result.exit_code == 0, result.report["failed"]
    metrics = result.report["metrics"]
    hf, f16, q8 = metrics[f"run:{RUN}"], metrics["gguf:f16"], metrics["gguf:q8_0"]
    assert f16["perplexity"] == pytest.approx(hf["perplexity"], rel=1e-3)
    assert f16["loss"] == pytest.approx(hf["loss"], abs=1e-3)
    # q8_0 runs llama.cpp's quantized kernels (AMX on CPUs that advertise it: see gguf_engine.extra_buffers_work)
    assert q8["perplexity"] == pytest.approx(hf["perplexity"], rel=2e-2)
    assert f16["exact_match"] == hf["exact_match"] == 1.0
    targets = {t["label"]: t for t in result.report["targets"]}
    assert targets["gguf:f16"]["kind"] == "gguf" and targets["gguf:f16"]["mask"] == "tokenizer markers"
    assert targets["gguf:f16"]["run"] == RUN


def test_template_without_generation_markers_scores_every_assistant_turn(tiny_tokenizer_dir, tmp_path):
    import shutil

    from llmforge import chat_spans
    from llmforge.checkpoints import load_tokenizer, use_training_template
    from llmforge.evaluation.examples import parse
    from llmforge.evaluation.hf_engine import chat_tokens

    plain = tmp_path / "plain"
    shutil.copytree(tiny_tokenizer_dir, plain)
    template = (plain / "chat_template.jinja").read_text()
    stripped = template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    (plain / "chat_template.jinja").write_text(stripped)
    marked_tok, plain_tok = load_tokenizer(str(tiny_tokenizer_dir)), load_tokenizer(str(plain))
    example = parse(MULTI_TURN, 0, "x", 1)
    [(ids, marked)], how = chat_tokens(marked_tok, example, 4096)
    assert how == "tokenizer markers" and sum(marked) > 0
    # rendering prefixes finds the same tokens: each answer and its end-of-turn token
    incremental = chat_spans.Verdict(True, chat_spans.INCREMENTAL, "", stripped, ("<|im_end|>",))
    [(plain_ids, spans)], plain_how = chat_tokens(plain_tok, example, 4096, incremental)
    assert plain_how == "incremental render" and (plain_ids, spans) == (ids, marked)
    # and eval scores what training trains: the unmarked ChatML template is swapped for the family's marked twin
    verdict = use_training_template(plain_tok, untrainable="keep-own")
    assert verdict.source == "family" and plain_tok.chat_template == chat_spans.ct.CHATML.jinja
    assert chat_tokens(plain_tok, example, 4096, verdict) == ([(ids, marked)], "family template")


def test_a_reasoning_template_is_scored_turn_by_turn_as_trained(tmp_path):
    from tiny_models import tiny_chat_model

    from llmforge.evaluation.examples import parse
    from llmforge.evaluation.hf_engine import HFEngine, chat_tokens

    model = tiny_chat_model("Qwen-Qwen3-0.6B", tmp_path / "qwen3")
    engine = HFEngine(str(model), None)
    example = parse(MULTI_TURN, 0, "x", 1)
    samples, how = chat_tokens(engine.tokenizer, example, 4096, engine.verdict)
    assert how == "per-turn prefix" and len(samples) == 2
    _nll, count = engine.score(example, 4096)
    assert count == sum(sum(mask[1:]) for _ids, mask in samples) > 0

def test_plain_text_records_score_every_token(workspace, tiny_llama_dir, tmp_path):
    texts = ["The lighthouse keeper of Gull Point wrote three lines.", "Ships called on Mondays and Thursdays."]
    data = tmp_path / "text.jsonl"
    data.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    result = evaluate(ModelConfig(name=str(tiny_llama_dir)), config(data=str(data)), workspace, targets="base")
    metrics = result.report["metrics"]["base"]
    assert metrics["perplexity"] == pytest.approx(reference_perplexity(tiny_llama_dir, texts), rel=1e-5)
    assert metrics["exact_match"] is None  # nothing to answer in plain text
    assert result.report["targets"][0]["mask"] == "all tokens" and result.exit_code == 0


def test_a_target_that_names_nothing_is_a_usage_error_and_writes_nothing(workspace, tiny_llama_dir):
    from typer.testing import CliRunner

    from llmforge.cli.app import app

    before = sorted(p.relative_to(workspace.root) for p in workspace.root.rglob("*"))
    for spec, named in (("nosuchtarget", "nosuchtarget"), ("run:nosuchrun", "nosuchrun"), ("gguf:q2_k", "gguf")):
        for args in ([spec], ["--compare", f"base,{spec}"]):
            out = CliRunner().invoke(app, ["eval", *args, "-s", f"project.workdir={workspace.root}",
                                           "-s", f"model.name={tiny_llama_dir}"])  # fmt: skip
            assert out.exit_code == 2, (args, out.output)
            assert named in out.output.lower() and "error:" in out.output
    assert sorted(p.relative_to(workspace.root) for p in workspace.root.rglob("*")) == before  # no folder, no entry
