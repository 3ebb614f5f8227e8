"""The demo pipeline end to end, with fewer steps: every artifact, the lineage in `runs show`, and that the
fine-tuned model beats its base (lower held-out perplexity, higher exact match on memorised questions).

OLLAMA_HOST points at the Ollama stand-in (tests/fakes), so the demo takes its real deploy path: upload, create,
and the check that the registered model answers and stops, through the official client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("ollama")
# About two minutes (the whole demo); every stage it runs has its own fast end-to-end test in the default tier.
pytestmark = pytest.mark.slow

from fakes.ollama_server import StandIn  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("demo") / "work"
    summary = workdir.parent / "summary.json"
    with StandIn() as ollama_server:
        proc = subprocess.run(
            [sys.executable, "scripts/demo.py", "--fast", "--workdir", str(workdir), "--summary-json", str(summary)],
            cwd=ROOT, capture_output=True, text=True, timeout=1200, env={**os.environ, "OLLAMA_HOST": ollama_server.host},
        )  # fmt: skip
        registered = sorted(ollama_server.models)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return workdir, json.loads(summary.read_text()), proc.stdout, registered


def test_every_stage_left_its_artifacts(demo):
    workdir, summary, _, _ = demo
    for name in (
        "train.jsonl",
        "val.jsonl",
        "test.jsonl",
        "rejected.jsonl",
        "report.json",
        "report.md",
        "probes.jsonl",
    ):
        assert (workdir / "data" / name).is_file(), name
    assert (workdir / "runs/base/model/model.safetensors").is_file()
    assert (workdir / "runs/lora/adapter/adapter_model.safetensors").is_file()
    for run in ("base", "lora"):
        assert (workdir / "runs" / run / "metrics.jsonl").is_file() and (workdir / "runs" / run / "loss.png").is_file()
    assert (workdir / "export/lora/lora-q8_0.gguf").is_file() and (workdir / "export/lora/lora-q4_k_m.gguf").is_file()
    assert all(f["verified"] for f in summary["export"]["files"])
    modelfile = (workdir / "deploy/brightwave-demo/Modelfile").read_text()
    assert 'TEMPLATE """' in modelfile and 'PARAMETER stop """<|im_end|>"""' in modelfile
    assert len(list((workdir / "eval").glob("2*/report.json"))) == 2
    assert summary["data"]["rejected"] == 4 and summary["data"]["exact_duplicates"] >= 1


def test_fine_tuned_beats_base(demo):
    _, summary, stdout, _ = demo
    run_key = next(k for k in summary["eval_test"] if k.startswith("run"))
    assert summary["eval_test"][run_key]["perplexity"] < summary["eval_test"]["base"]["perplexity"]
    assert summary["eval_probes"][run_key]["exact_match"] > summary["eval_probes"]["base"]["exact_match"]
    assert "fine-tuned beats base: yes" in stdout


def test_served_model_answers_and_stops(demo):
    _, summary, _, _ = demo
    assert summary["serve"]["engine"] == "llamacpp"
    assert summary["serve"]["finish_reason"] == "stop"
    assert summary["serve"]["answer"].strip() and "<|im_end|>" not in summary["serve"]["answer"]


def test_runs_show_has_the_lineage(demo):
    workdir, _, _, _ = demo
    out = subprocess.run(
        [sys.executable, "-m", "llmforge", "runs", "show", "lora", "--json", "-s", f"project.workdir={workdir}"],
        cwd=ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    data = json.loads(out.stdout)
    kinds = [e["kind"] for e in data["lineage"]]
    assert kinds[0] == "dataset" and kinds[-1] == "run"
    below = {e["kind"] for e in data["descendants"]}
    assert {"export", "deployment"} <= below, data["descendants"]


def test_deployed_for_real_through_the_client(demo):
    _, summary, _, registered = demo
    assert summary["deploy"]["mode"].startswith("registered with Ollama")
    assert any(name.startswith("brightwave-demo") for name in registered), registered
