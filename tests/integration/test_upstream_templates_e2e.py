"""The whole path on tiny models that carry real upstream chat templates, through the CLI as a user runs it:
`data preview` shows each answer with its end-of-turn token as the trained span, `train --method lora`,
`export gguf` (f16, verified against HF with the real special tokens), `deploy ollama` against the Ollama stand-in
(TEMPLATE, stops and caveats as chat_templates.deploy_verdict says), and a served answer that stops at the
end-of-turn token under `llmforge serve` and under Ollama.

A few-step model does not stop reliably, so the serving checks run a GGUF built by tests/tiny_gguf.py from the run's
own saved tokenizer and trained template: it answers REPLY, then the end-of-turn token, as a trained model does.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("llama_cpp")
pytest.importorskip("ollama")

import upstream_templates  # noqa: E402
from fakes.ollama_server import StandIn  # noqa: E402
from serve_helpers import read_banner  # noqa: E402
from test_deploy_ollama import gorender, modelfile_template  # noqa: E402, F401  (gorender: a fixture)
from tiny_gguf import REPLY, build_gguf  # noqa: E402
from tiny_models import tiny_chat_model  # noqa: E402
from train_data import workspace_with  # noqa: E402

from llmforge import chat_templates as ct  # noqa: E402
from llmforge.workspace import Workspace  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]

# corpus file -> (tiny architecture, the end-of-turn token its answers are trained to end with,
#                 deploy_verdict's family and caveats for the model's own template: tests/unit CORPUS_VERDICTS)
TEMPLATES = {
    "Qwen-Qwen2.5-7B-Instruct": ("qwen2", "<|im_end|>", "chatml", ("no-tools",)),
    "meta-llama-Llama-3.2-3B-Instruct": ("llama", "<|eot_id|>", "llama3.1", ("trims-whitespace", "date-format", "no-tools")),
    "Mistral-Small-3.2-24B-Instruct-2506": ("llama", "</s>", "mistral-system-prompt", ("no-tools",)),
    "google-gemma-3-it": ("llama", "<end_of_turn>", "gemma3", ("trims-whitespace",)),
    "HuggingFaceTB-SmolLM3-3B": ("llama", "<|im_end|>", "chatml-reasoning-header", ("trims-whitespace", "system-flags")),
    "deepseek-ai-DeepSeek-R1-Distill-Llama-8B": ("llama", "<｜end▁of▁sentence｜>", "deepseek-r1", ("no-tools", "reasoning-history")),
    "microsoft-Phi-3.5-mini-instruct": ("llama", "<|end|>", "phi3", ()),
    "ibm-granite-granite-3.3-2B-Instruct": ("llama", "<|end_of_text|>", "granite", ("date-format", "no-tools")),
    "CohereLabs-aya-expanse-8b": ("llama", "<|END_OF_TURN_TOKEN|>", "cohere", ("trims-whitespace",)),
    "Qwen-Qwen3-0.6B": ("qwen2", "<|im_end|>", "chatml", ("no-tools", "reasoning-history")),
    # identified as a family: training borrows llmforge's marked copy to find the spans, but the run ships Nemo's own
    # template (it lists tools; the copy does not), so deploy still reports no-tools
    "mistralai-Mistral-Nemo-Instruct-2407": ("llama", "</s>", "mistral", ("no-tools",)),
}  # fmt: skip
# What the template writes before each trained answer inside the trained span: Qwen3 gives every assistant turn it
# renders last an empty reasoning block, which the model learns to write before its answer.
ANSWER_PREFIX = {"Qwen-Qwen3-0.6B": "<think>\n\n</think>\n\n"}

RECORDS = [
    {"messages": [{"role": "system", "content": "Answer briefly."},
                  {"role": "user", "content": f"What is {i} plus {i}?"},
                  {"role": "assistant", "content": f"{i} plus {i} is {2 * i}."},
                  {"role": "user", "content": "And doubled again?"},
                  {"role": "assistant", "content": f"Doubled again it is {4 * i}."}]}
    for i in range(4)
]  # fmt: skip
ASKED = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "What is 2 plus 2?"}]


def cli(*args: str):
    from typer.testing import CliRunner

    from llmforge.cli.app import app

    return CliRunner().invoke(app, list(args))


def ok_json(result) -> dict:
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)  # warnings go to stderr


def modelfile_stops(text: str) -> list[str]:
    return re.findall(r'^PARAMETER stop """(.*?)"""$', text, flags=re.M)


def serve_process(gguf: Path, cwd: Path) -> tuple[subprocess.Popen, str]:
    """`llmforge serve --model GGUF --port 0` as a user starts it; returns the process and its URL."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLMFORGE_", "OLLAMA_"))}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", COLUMNS="200")
    proc = subprocess.Popen(
        [sys.executable, "-m", "llmforge", "serve", "--model", str(gguf), "--engine", "llamacpp", "--port", "0",
         "--json", "-s", "project.workdir=work"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd,
    )  # fmt: skip
    info, _ = read_banner(proc)
    return proc, info["url"]


# The default tier takes three templates of different families, architectures and end-of-turn tokens (ChatML on
# qwen2, Llama 3 with a dated system header, Gemma 3 which trims whitespace); `make test-all` takes them all.
FAST_TEMPLATES = ("Qwen-Qwen2.5-7B-Instruct", "meta-llama-Llama-3.2-3B-Instruct", "google-gemma-3-it")


@pytest.mark.parametrize(
    "name", [n if n in FAST_TEMPLATES else pytest.param(n, marks=pytest.mark.slow) for n in TEMPLATES]
)
def test_real_template_from_data_to_a_served_answer_that_stops(name, tmp_path, gorender):  # noqa: F811
    import gguf as gguf_lib
    import httpx
    import ollama

    architecture, end_of_turn, family, caveats = TEMPLATES[name]
    _, bos, eos, _ = upstream_templates.CORPUS[name]
    verdict = ct.deploy_verdict(upstream_templates.read(name), bos, eos)
    assert (verdict.family.name, verdict.caveat_ids) == (family, caveats)
    model = tiny_chat_model(name, tmp_path / "model", architecture=architecture)
    ws = Workspace(workspace_with(tmp_path / "ws", RECORDS))
    common = ["-s", f"model.name={model}", "-s", f"project.workdir={ws.root}"]

    # 1. The preview shows exactly the answers, each closed by its end-of-turn token, as the trained spans.
    preview = ok_json(cli("data", "preview", "-n", "1", "--json", *common))
    trained = [
        segment["text"]
        for rendering in preview["examples"][0]["renderings"]
        for segment in rendering["segments"]
        if segment["trained"]
    ]
    answers = [m["content"] for m in RECORDS[0]["messages"] if m["role"] == "assistant"]
    # TRL's Qwen2.5 training template marks the newline that ends the "<|im_start|>assistant" header too
    prefix = ANSWER_PREFIX.get(name, "")
    assert [t.lstrip("\n") for t in trained] == [prefix + a + end_of_turn for a in answers], trained

    # 2. A few LoRA steps on the model with its own template.
    train = ok_json(cli("train", "--method", "lora", "--json", *common, "-s", "train.max_steps=3",
                        "-s", "train.run_name=r", "-s", "train.save_every=100"))  # fmt: skip
    manifest = json.loads(Path(train["manifest"]).read_text())
    assert manifest["steps"] == 3 and manifest["end_of_turn_checked"] == len(RECORDS)
    trained_template = (ws.run_dir("r") / "chat_template.jinja").read_text(encoding="utf-8")

    # 3. f16 GGUF, verified against HF: tokenization (special tokens included) and next-token logits.
    export = ok_json(cli("export", "gguf", "r", "--quant", "f16", "--json", *common))
    (entry,) = export["files"]
    assert export["verified"] is True and entry["verified"] is True
    assert entry["tokenization"]["ok"] and entry["tokenization"]["mismatches"] == []
    assert entry["logits"]["top1_agreement_decisive"] == 1.0  # f16 may flip near-ties of a random model
    gguf_path = Path(export["output_dir"]) / entry["path"]
    embedded = gguf_lib.GGUFReader(str(gguf_path)).fields["tokenizer.chat_template"].contents()
    assert embedded == trained_template

    slug = name.lower()
    with StandIn(gorender=gorender) as server:
        # 4. Deploy the trained export (no answer check: three steps do not teach it to stop).
        deployed = ok_json(cli("deploy", "ollama", "r", "--name", slug, "--host", server.host, "--json",
                               *common, "-s", "deploy.check=false"))  # fmt: skip
        assert (deployed["family"], deployed["template_status"]) == (family, verdict.status)
        assert [c["id"] for c in deployed["caveats"]] == list(caveats)
        expected_template = verdict.family.ollama_template_for(eos)
        expected_stops = {*verdict.family.stop_tokens, *ct.end_of_turn_tokens_for(verdict.family, eos), eos}
        assert end_of_turn in expected_stops
        assert set(deployed["stop"]) == expected_stops
        modelfile = ws.modelfile(slug).read_text(encoding="utf-8")
        assert modelfile_template(modelfile) == expected_template
        assert set(modelfile_stops(modelfile)) == expected_stops and len(modelfile_stops(modelfile)) == len(
            expected_stops
        )
        for c in caveats:
            assert f"caveat {c}:" in modelfile
        assert server.models[f"{slug}:latest"]["template"] == expected_template

        # 5. A model that stops, built from the run's own tokenizer and trained template, deployed and served.
        tokenizer_dir = ws.run_dir("r") / "adapter"
        prompt = ct.render(trained_template, ASKED, add_generation_prompt=True, bos_token=bos, eos_token=eos)
        stopping = build_gguf(tmp_path / "stopping" / "tiny-f32.gguf", tokenizer_dir, end_of_turn=end_of_turn,
                              prompt=prompt, context_length=4096)  # fmt: skip
        shown = cli("deploy", "ollama", str(stopping), "--name", f"{slug}-stops", "--host", server.host, *common)
        assert shown.exit_code == 0, shown.output
        printed = " ".join(shown.output.split())
        for c in caveats:
            assert f"caveat {c}:" in printed
        deployed_stops = json.loads(ws.deploy_dir(f"{slug}-stops").joinpath("manifest.json").read_text())
        assert deployed_stops["check"]["ok"] and deployed_stops["check"]["content"] == REPLY
        assert set(deployed_stops["stop"]) == expected_stops
        answer = ollama.Client(host=server.host).chat(model=f"{slug}-stops", messages=ASKED,
                                                      options={"temperature": 0})  # fmt: skip
        assert (answer.message.content, answer.done_reason) == (REPLY, "stop")

    proc, url = serve_process(stopping, tmp_path)
    try:
        reply = httpx.post(url + "/v1/chat/completions", json={"messages": ASKED, "temperature": 0,
                                                               "max_tokens": 32}, timeout=60).json()  # fmt: skip
    finally:
        proc.terminate()
        proc.wait(30)
    choice = reply["choices"][0]
    assert (choice["message"]["content"], choice["finish_reason"]) == (REPLY, "stop"), reply
