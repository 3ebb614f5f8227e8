"""Whole evaluations of served targets (no torch): an OpenAI-compatible stand-in server on 127.0.0.1 as the model
and as the judge, dead targets that fail alone, the generation cache, deltas, the report and the CLI's exit codes."""

from __future__ import annotations

import json

import pytest
import yaml
from fakes.judge_server import FakeOpenAIServer
from typer.testing import CliRunner

from llmforge import registry
from llmforge.cli.app import app
from llmforge.config.eval import EvalConfig, JudgeConfig
from llmforge.config.model import ModelConfig
from llmforge.evaluation import evaluate
from llmforge.workspace import Workspace

QA = {
    "What colour is the lighthouse?": "Red and white.",
    "Which days does the ferry call?": "Mondays and Thursdays.",
    "How many litres does a 12 hour lamp use?": "About 3 litres.",
    "Who wrote in the logbook?": "The keeper.",
}
TEXT_METRICS = ["bleu", "rouge", "chrf", "exact_match", "f1"]
DEAD_HTTP = "http://127.0.0.1:9"


@pytest.fixture
def ws(tmp_path) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ws.data_dir.mkdir(parents=True)
    rows = [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA.items()]
    ws.split_file("test").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return ws


def _config(**kw) -> EvalConfig:
    return EvalConfig(metrics=TEXT_METRICS, bootstrap=200, max_new_tokens=32, **kw)


def three_right() -> dict[str, str]:
    answers = dict(QA)
    answers["Who wrote in the logbook?"] = "Nobody at all."
    return answers


def test_served_model_scores_and_dead_targets_fail_alone(ws, monkeypatch):
    monkeypatch.setenv("OLLAMA_HOST", "127.0.0.1:9")
    with FakeOpenAIServer(three_right()) as good, FakeOpenAIServer({}, broken=True) as broken:
        result = evaluate(ModelConfig(), _config(), ws,
                          compare=[good.url, DEAD_HTTP, "ollama:missing", broken.url])
    report = result.report
    assert result.exit_code == 1
    assert set(result.failed) == {DEAD_HTTP, "ollama:missing", broken.url}
    ok = report["metrics"][good.url]
    assert ok["exact_match"] == pytest.approx(0.75)
    assert ok["bleu"] > 50 and ok["rougeL"] > 0.7 and ok["tokens_per_second"] > 0
    failed = report["failed"]
    assert "cannot reach http://127.0.0.1:9/v1" in failed[DEAD_HTTP]["error"]
    assert "cannot reach Ollama at http://127.0.0.1:9" in failed["ollama:missing"]["error"]
    assert "HTTP 500" in failed[broken.url]["error"] and "the model crashed" in failed[broken.url]["error"]
    # every example was sent with the same greedy decoding, and the model name came from /v1/models
    bodies = good.completions()
    assert len(bodies) == 4 and {b["temperature"] for b in bodies} == {0.0} and {b["model"] for b in bodies} == {
        "fake-model"}
    folder = result.folder
    assert json.loads((folder / "report.json").read_text())["failed"].keys() == failed.keys()
    md = (folder / "report.md").read_text()
    assert "FAILED: cannot reach http://127.0.0.1:9/v1" in md and "ollama:missing" in md
    assert (folder / "metrics.png").stat().st_size > 0
    preds = [json.loads(line) for line in (folder / "predictions.jsonl").read_text().splitlines()]
    assert preds[3]["targets"][good.url]["prediction"] == "Nobody at all."
    entry = registry.find(ws.registry_file, f"eval-{folder.name}")
    assert entry["kind"] == "eval" and set(entry["failed"]) == set(result.failed)
    assert entry["status"] == "3 of 4 targets failed" and entry["path"] == str(folder)
    assert entry["metrics"]["exact_match"] == pytest.approx(0.75)


def test_ollama_target_through_the_official_client(ws, monkeypatch):
    with FakeOpenAIServer(three_right(), model="tuned") as server:
        monkeypatch.setenv("OLLAMA_HOST", server.url.removesuffix("/v1"))
        result = evaluate(ModelConfig(), _config(), ws, compare="ollama:tuned,ollama:absent")
        chats = [r["body"] for r in server.requests if r["path"] == "/api/chat"]
    assert result.report["metrics"]["ollama:tuned"]["exact_match"] == pytest.approx(0.75)
    assert len(chats) == 4 and chats[0]["options"] == {"temperature": 0.0, "seed": 0, "num_predict": 32, "repeat_penalty": 1.0,
                                                 "top_k": 1}
    assert chats[0]["messages"] == [{"role": "user", "content": next(iter(QA))}]
    absent = result.report["failed"]["ollama:absent"]
    assert "has no model 'absent'" in absent["error"] and "tuned:latest" in absent["hint"]


def test_rerun_and_added_target_compute_only_what_is_new(ws):
    with FakeOpenAIServer(QA) as right, FakeOpenAIServer({}, model="other") as wrong:
        first = evaluate(ModelConfig(), _config(), ws, targets=right.url)
        assert len(right.completions()) == 4 and first.report["targets"][0]["generated"] == 4
        second = evaluate(ModelConfig(), _config(), ws, compare=[right.url, wrong.url])
        assert len(right.completions()) == 4  # nothing new sent to the first target
        assert len(wrong.completions()) == 4
        assert [(t["generated"], t["cached"]) for t in second.report["targets"]] == [(0, 4), (4, 0)]
        assert second.report["metrics"][right.url]["exact_match"] == 1.0
        # a different decoding is a different cache entry
        evaluate(ModelConfig(), _config().model_copy(update={"max_new_tokens": 8}), ws, targets=right.url)
        assert len(right.completions()) == 8
    assert first.folder != second.folder


def test_deltas_against_the_reference_with_bootstrap_intervals(ws):
    with FakeOpenAIServer(QA) as right, FakeOpenAIServer({}, model="other") as wrong:
        result = evaluate(ModelConfig(), _config(), ws, compare=[wrong.url, right.url])
    report = result.report
    assert report["reference"] == wrong.url  # no `base` target: the first one is the reference
    em = report["deltas"][right.url]["exact_match"]
    assert em["delta"] == pytest.approx(1.0) and em["low"] == pytest.approx(1.0) and em["high"] == pytest.approx(1.0)
    bleu = report["deltas"][right.url]["bleu"]
    assert bleu["delta"] > 0 and bleu["low"] <= bleu["delta"] <= bleu["high"]
    assert "Deltas against" in (result.folder / "report.md").read_text()
    assert (result.folder / "per_example.png").is_file()


def test_judge_scores_the_rubric(ws, monkeypatch):
    monkeypatch.setenv("LLMFORGE_JUDGE_API_KEY", "sekret")
    with FakeOpenAIServer(three_right()) as model, FakeOpenAIServer(model="judge") as judge_server:
        config = _config(judge=JudgeConfig(endpoint=judge_server.url, model="judge"))
        result = evaluate(ModelConfig(), config, ws, targets=model.url)
        asked = judge_server.completions(judge=True)
        assert len(asked) == 4 and {r["auth"] for r in judge_server.requests if r["path"].endswith("completions")} \
            == {"Bearer sekret"}
        again = evaluate(ModelConfig(), config, ws, targets=model.url)
        assert len(judge_server.completions(judge=True)) == 4  # judge verdicts are cached too
    metrics = result.report["metrics"][model.url]
    # three answers equal the reference (5 on every criterion), one does not (1)
    for criterion in ("relevance", "helpfulness", "accuracy"):
        assert metrics[f"judge_{criterion}"] == pytest.approx((5 + 5 + 5 + 1) / 4)
    assert again.report["metrics"][model.url]["judge_accuracy"] == pytest.approx(4.0)


def test_unreachable_judge_is_reported_without_failing_the_target(ws):
    with FakeOpenAIServer(QA) as model:
        result = evaluate(ModelConfig(), _config(judge=JudgeConfig(endpoint=DEAD_HTTP)), ws, targets=model.url)
    assert result.exit_code == 0
    target = result.report["targets"][0]
    assert "cannot reach" in target["judge_error"]
    assert "judge failed" in (result.folder / "report.md").read_text()


def test_cli_prints_the_table_and_exits_1_when_a_target_fails(ws, tmp_path):
    cfg = tmp_path / "llmforge.yaml"
    cfg.write_text(yaml.safe_dump({"project": {"workdir": str(ws.root)}, "eval": {"metrics": TEXT_METRICS}}))
    runner = CliRunner()
    with FakeOpenAIServer(QA) as model:
        ok = runner.invoke(app, ["eval", model.url, "-c", str(cfg), "--limit", "2", "--max-new-tokens", "16"])
        assert ok.exit_code == 0, ok.output
        assert "exact_match" in ok.output and "report:" in ok.output
        assert {b["max_tokens"] for b in model.completions()} == {16} and len(model.completions()) == 2
        bad = runner.invoke(app, ["eval", "--compare", f"{model.url},{DEAD_HTTP}", "-c", str(cfg), "--json"])
    assert bad.exit_code == 1
    data = json.loads(bad.output)
    assert data["metrics"][model.url]["exact_match"] == 1.0
    assert "cannot reach" in data["failed"][DEAD_HTTP]["error"]
    both = runner.invoke(app, ["eval", "base", "--compare", "base,run", "-c", str(cfg)])
    assert both.exit_code == 2 and "either TARGET or --compare" in both.output


def test_missing_test_split_is_a_usage_error(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["eval", "http://127.0.0.1:9", "-s", f"project.workdir={tmp_path / 'empty'}"])
    assert result.exit_code == 2
    assert "evaluation data not found" in result.output and "llmforge data prepare" in result.output
