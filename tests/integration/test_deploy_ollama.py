"""`llmforge deploy ollama|list|show|remove` end to end: the real `ollama` client against the stand-in server, which
runs the deployed GGUF with llama.cpp under the registered template and stop tokens."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmforge import chat_templates as ct
from llmforge import registry
from llmforge.cli.app import app
from llmforge.workspace import Workspace

pytest.importorskip("llama_cpp")
pytest.importorskip("ollama")

from fakes.ollama_server import StandIn  # noqa: E402
from tiny_gguf import REPLY, build_gguf  # noqa: E402

GORENDER_SRC = Path(__file__).resolve().parents[1] / "tools" / "gorender"
RUN = "sft-1"
WS = Path("llmforge-work/llmforge-project")  # the default workspace, relative to each test's own cwd
CUSTOM_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


@pytest.fixture(scope="module")
def gorender(tmp_path_factory) -> Path | None:
    """Go's text/template renders the registered TEMPLATE when Go is installed (CI); else the Jinja twin does."""
    if shutil.which("go") is None:
        return None
    binary = tmp_path_factory.mktemp("gorender") / "gorender"
    env = {**os.environ, "GOFLAGS": "-mod=mod", "CGO_ENABLED": "0"}
    subprocess.run(["go", "build", "-o", str(binary), "."], cwd=GORENDER_SRC, env=env, check=True, timeout=300)
    return binary


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    return build_gguf(tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf", tiny_tokenizer_dir)


def make_export(
    gguf: Path,
    tokenizer_dir: Path,
    *,
    quants=("f32",),
    max_length: int | None = 128,
    template: str | None = None,
    f16: Path | None = None,
) -> Workspace:
    """An export folder as the export stage leaves it: GGUF(s), merged/ tokenizer, manifest.json, registry entry."""
    ws = Workspace(WS)
    folder = ws.export_dir(RUN)
    folder.mkdir(parents=True)
    files = []
    for quant in quants:
        target = ws.gguf_file(RUN, "tiny", quant)
        shutil.copy(f16 if quant == "f16" else gguf, target)
        files.append({"quant": quant, "path": target.name, "verified": True})
    merged = ws.merged_dir(RUN)
    shutil.copytree(tokenizer_dir, merged)
    if template is not None:
        (merged / "chat_template.jinja").write_text(template, encoding="utf-8")
    (merged / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}), encoding="utf-8")
    (ws.export_manifest(RUN)).write_text(
        json.dumps({"finished_at": "2026-11-22T00:00:00+00:00", "files": files, "verified": True}), encoding="utf-8"
    )
    if max_length:
        ws.run_dir(RUN).mkdir(parents=True)
        (ws.run_dir(RUN) / "config.yaml").write_text(f"train:\n  max_length: {max_length}\n", encoding="utf-8")
    registry.record(ws.registry_file, "run", RUN)
    for quant in quants:
        registry.record(ws.registry_file, "export", f"{RUN}/{quant}", parent=RUN)
    return ws


def deploy(*args: str):
    return CliRunner().invoke(app, ["deploy", "ollama", *args])


def modelfile_template(text: str) -> str:
    start = text.index('TEMPLATE """') + len('TEMPLATE """')
    return text[start : text.index('"""', start)]


@pytest.mark.parametrize("renderer", ["go", "jinja-twin"])
def test_deploy_registers_checks_and_records_lineage(tiny_gguf, tiny_tokenizer_dir, gorender, renderer):
    if renderer == "go" and gorender is None:
        pytest.skip("Go is not installed: the stand-in renders with the Jinja twin")
    ws = make_export(tiny_gguf, tiny_tokenizer_dir)
    with StandIn(gorender=gorender if renderer == "go" else None) as server:
        result = deploy("--name", "tiny-bot", "--host", server.host, "--system", "Answer briefly.", "--json")
        assert result.exit_code == 0, result.output
        out = json.loads(result.output)
        assert out["family"] == "chatml" and out["template_source"] == "identified"
        assert out["check"]["ok"] and out["check"]["done_reason"] == "stop" and out["check"]["content"] == REPLY
        assert out["run_command"] == "ollama run tiny-bot"

        # What Ollama got: the blob, then create with the family's Go template, SYSTEM and every stop token.
        create = next(body for method, path, body in server.requests if path == "/api/create")
        assert create["files"] == {"model.gguf": out["digest"]}
        assert create["template"] == ct.CHATML.ollama_template
        assert create["system"] == "Answer briefly."
        assert set(create["parameters"]["stop"]) == {"<|im_end|>", "<|im_start|>", "<|endoftext|>"}
        assert create["parameters"]["num_ctx"] == 128  # train.max_length of the run
        chat = next(body for method, path, body in server.requests if path == "/api/chat")
        assert chat["stream"] is True and chat["options"]["num_predict"] > 0

        # The Modelfile says the same thing.
        text = (ws.modelfile("tiny-bot")).read_text(encoding="utf-8")
        assert modelfile_template(text) == ct.CHATML.ollama_template
        for stop in ("<|im_end|>", "<|im_start|>", "<|endoftext|>"):
            assert f'PARAMETER stop """{stop}"""' in text
        assert f"FROM {(ws.export_dir(RUN) / 'tiny-f32.gguf').resolve()}" in text
        assert 'SYSTEM """Answer briefly."""' in text and "PARAMETER num_ctx 128" in text

        chain = registry.lineage(ws.registry_file, "tiny-bot")
        assert [(e["kind"], e["id"]) for e in chain] == [
            ("run", RUN),
            ("export", f"{RUN}/f32"),
            ("deployment", "tiny-bot"),
        ]
        manifest = json.loads((ws.deploy_dir("tiny-bot") / "manifest.json").read_text())
        assert manifest["finished_at"] and manifest["check"]["ok"] and manifest["export"] == f"{RUN}/f32"
        assert manifest["config"]["deploy"]["template"] == "auto" and manifest["inputs"]["modelfile"]["sha256"]

        runner = CliRunner()
        listed = json.loads(runner.invoke(app, ["deploy", "list", "--json"]).output)
        assert [(r["name"], r["export"], r["check_ok"]) for r in listed] == [("tiny-bot", f"{RUN}/f32", True)]
        shown = runner.invoke(app, ["deploy", "show", "tiny-bot", "--json"])
        assert shown.exit_code == 0, shown.output
        assert json.loads(shown.output)["ollama"]["registered"] is True

        removed = runner.invoke(app, ["deploy", "remove", "tiny-bot", "--json"])
        assert removed.exit_code == 0, removed.output
        assert json.loads(removed.output)["deleted_from_ollama"] is True
        assert server.models == {}
        assert not ws.deploy_dir("tiny-bot").exists()
        assert registry.find(ws.registry_file, "tiny-bot") is None
        assert json.loads(runner.invoke(app, ["deploy", "list", "--json"]).output) == []


@pytest.mark.parametrize(
    ("fault", "expected"),
    [
        ("leak_template_tokens", "template tokens leaked into the answer (<|im_end|>"),
        ("never_stop", "did not stop by itself"),
    ],
)
def test_a_broken_deployment_fails_with_exit_1(tiny_gguf, tiny_tokenizer_dir, gorender, fault, expected):
    ws = make_export(tiny_gguf, tiny_tokenizer_dir)
    with StandIn(gorender=gorender, fault=fault) as server:
        result = deploy("--name", "tiny-bot", "--host", server.host)
    assert result.exit_code == 1, result.output
    assert expected in " ".join(result.output.split())
    assert "llmforge deploy remove tiny-bot" in result.output
    entry = registry.find(ws.registry_file, "tiny-bot")
    assert entry is not None and entry["check_ok"] is False  # recorded, so `deploy remove` can clean it up
    assert entry["status"] == "check failed" and entry["path"] == str(ws.deploy_dir("tiny-bot"))
    shown = CliRunner().invoke(app, ["runs", "list", "--kind", "deployment", "--json"])
    assert [(e["id"], e["status"], e["size_bytes"] > 0) for e in json.loads(shown.output)["entries"]] == [
        ("tiny-bot", "check failed", True)
    ]


def test_never_stopping_says_length_and_what_it_wrote(tiny_gguf, tiny_tokenizer_dir, gorender):
    make_export(tiny_gguf, tiny_tokenizer_dir)
    with StandIn(gorender=gorender, fault="never_stop") as server:
        result = deploy("--name", "tiny-bot", "--host", server.host, "--json")
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "'length'" in text and REPLY in text


def test_a_model_that_never_learned_to_stop_fails_the_check(tiny_tokenizer_dir, tmp_path, gorender):
    """No fault injected: the stand-in runs the GGUF honestly, and the model itself never ends its turn."""
    rambler = build_gguf(tmp_path / "rambler.gguf", tiny_tokenizer_dir, learned_stop=False)
    make_export(rambler, tiny_tokenizer_dir)
    with StandIn(gorender=gorender) as server:
        result = deploy("--name", "tiny-bot", "--host", server.host)
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert "did not stop by itself" in text and "'length'" in text


def test_show_and_remove_when_ollama_is_gone(tiny_gguf, tiny_tokenizer_dir, gorender):
    make_export(tiny_gguf, tiny_tokenizer_dir)
    with StandIn(gorender=gorender) as server:
        assert deploy("--name", "tiny-bot", "--host", server.host).exit_code == 0
    runner = CliRunner()
    shown = runner.invoke(app, ["deploy", "show", "tiny-bot", "--json"])
    assert shown.exit_code == 0 and json.loads(shown.output)["ollama"]["registered"] is None
    removed = runner.invoke(app, ["deploy", "remove", "tiny-bot"])
    assert removed.exit_code == 1 and "cannot reach Ollama" in removed.output
    assert json.loads(runner.invoke(app, ["deploy", "list", "--json"]).output)[0]["name"] == "tiny-bot"
    unknown = runner.invoke(app, ["deploy", "show", "nope"])
    assert unknown.exit_code == 2 and "deployments: tiny-bot" in unknown.output


def test_refused_registration_is_exit_1(tiny_gguf, tiny_tokenizer_dir):
    make_export(tiny_gguf, tiny_tokenizer_dir)
    with StandIn(fault="refuse_create") as server:
        result = deploy("--name", "tiny-bot", "--host", server.host)
    assert result.exit_code == 1
    assert "refused to register 'tiny-bot'" in result.output and "create refused" in result.output


def test_a_server_that_drops_the_template_is_caught(tiny_gguf, tiny_tokenizer_dir):
    make_export(tiny_gguf, tiny_tokenizer_dir)
    with StandIn(fault="ignore_template") as server:
        result = deploy("--name", "tiny-bot", "--host", server.host)
    assert result.exit_code == 1
    assert "with a different TEMPLATE than the one sent" in " ".join(result.output.split())


def test_unreachable_ollama_names_the_host_and_how_to_start_it(tiny_gguf, tiny_tokenizer_dir, monkeypatch):
    make_export(tiny_gguf, tiny_tokenizer_dir)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    monkeypatch.setenv("OLLAMA_HOST", f"http://127.0.0.1:{port}")
    result = deploy("--name", "tiny-bot")
    assert result.exit_code == 1
    text = " ".join(result.output.split())
    assert f"cannot reach Ollama at http://127.0.0.1:{port}" in text
    assert "ollama serve" in text and "OLLAMA_HOST" in text


def test_a_taken_name_is_refused_unless_forced(tiny_gguf, tiny_tokenizer_dir, gorender):
    import ollama

    make_export(tiny_gguf, tiny_tokenizer_dir)
    with StandIn(gorender=gorender) as server:
        client = ollama.Client(host=server.host)
        digest = client.create_blob(tiny_gguf)
        client.create(model="tiny-bot", files={"model.gguf": digest})
        refused = deploy("--name", "tiny-bot", "--host", server.host)
        assert refused.exit_code == 2 and "already has a model named 'tiny-bot'" in refused.output
        assert "--force" in refused.output
        assert server.models["tiny-bot:latest"]["template"] == ""  # untouched
        forced = deploy("--name", "tiny-bot", "--host", server.host, "--force")
        assert forced.exit_code == 0, forced.output
        assert server.models["tiny-bot:latest"]["template"] == ct.CHATML.ollama_template
        again = deploy("--name", "tiny-bot", "--host", server.host)  # the workspace has it now, too
        assert again.exit_code == 2 and "--force" in again.output


def test_dry_run_writes_the_modelfile_and_contacts_nothing(tiny_gguf, tiny_tokenizer_dir, monkeypatch):
    ws = make_export(tiny_gguf, tiny_tokenizer_dir)
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")  # would fail if contacted
    result = deploy("--name", "tiny-bot", "--dry-run")
    assert result.exit_code == 0, result.output
    assert f"ollama create tiny-bot -f {ws.modelfile('tiny-bot')}" in " ".join(result.output.split())
    assert modelfile_template(ws.modelfile("tiny-bot").read_text()) == ct.CHATML.ollama_template
    assert not (ws.deploy_dir("tiny-bot") / "manifest.json").exists()
    assert registry.find(ws.registry_file, "tiny-bot") is None


def test_no_gguf_says_which_command_makes_one():
    result = deploy("--name", "tiny-bot", "--dry-run")
    assert result.exit_code == 2
    assert "llmforge export gguf" in result.output


def test_text_a_modelfile_cannot_hold_is_refused_before_anything_is_sent(tiny_gguf, tiny_tokenizer_dir):
    ws = make_export(tiny_gguf, tiny_tokenizer_dir)
    with StandIn() as server:
        result = deploy("--name", "tiny-bot", "--host", server.host, "--system", 'Say """hi""".')
        assert result.exit_code == 2
        assert '"""' in result.output and "system prompt" in result.output
        assert server.requests == [] and not ws.modelfile("tiny-bot").exists()


def test_unknown_template_is_refused_with_both_ways_out(tiny_gguf, tiny_tokenizer_dir, tmp_path):
    custom = build_gguf(tmp_path / "custom.gguf", tiny_tokenizer_dir, chat_template=CUSTOM_TEMPLATE)
    make_export(custom, tiny_tokenizer_dir, template=CUSTOM_TEMPLATE)
    result = deploy("--name", "tiny-bot", "--dry-run")
    assert result.exit_code == 2
    text = " ".join(result.output.split())
    assert "not one llmforge can reproduce" in text
    assert "model.chat_template: <family>" in text and "deploy.template: embedded" in text


def test_embedded_template_omits_template_warns_and_is_still_checked(tiny_gguf, tiny_tokenizer_dir, tmp_path, gorender):
    custom = build_gguf(tmp_path / "custom.gguf", tiny_tokenizer_dir, chat_template=CUSTOM_TEMPLATE)
    ws = make_export(custom, tiny_tokenizer_dir, template=CUSTOM_TEMPLATE)
    with StandIn(gorender=gorender) as server:
        result = deploy("--name", "tiny-bot", "--host", server.host, "--set", "deploy.template=embedded")
        assert result.exit_code == 0, result.output
        assert "embedded" in result.output and "warning" in result.output
        assert server.models["tiny-bot:latest"]["template"] == ""
    text = ws.modelfile("tiny-bot").read_text()
    assert "TEMPLATE" not in text and 'PARAMETER stop """<|im_end|>"""' in text


def test_quant_choice_parameters_messages_and_license(tiny_gguf, tiny_tokenizer_dir, tmp_path, gorender):
    f16 = build_gguf(tmp_path / "tiny-f16.gguf", tiny_tokenizer_dir, f16=True)
    ws = make_export(tiny_gguf, tiny_tokenizer_dir, quants=("f32", "f16"), max_length=None, f16=f16)
    Path("LICENSE.txt").write_text("Use it kindly.\n", encoding="utf-8")
    Path("llmforge.yaml").write_text(
        "deploy:\n"
        "  template: chatml\n"
        "  parameters: {temperature: 0.2, top_p: 0.9, stop: ['###']}\n"
        "  license: LICENSE.txt\n"
        "  messages:\n"
        "    - {role: user, content: 'What do you keep?'}\n"
        "    - {role: assistant, content: 'The lamp.'}\n",
        encoding="utf-8",
    )
    missing = deploy("--name", "tiny-bot", "--quant", "q4_k_m", "--dry-run")
    assert missing.exit_code == 2 and "f16, f32" in missing.output
    with StandIn(gorender=gorender) as server:
        result = deploy("--name", "tiny-bot", "--host", server.host, "--json")  # default: the smallest file
        assert result.exit_code == 0, result.output
        out = json.loads(result.output)
        assert out["export_id"] == f"{RUN}/f16" and out["template_source"] == "configured"
        model = server.models["tiny-bot:latest"]
        assert model["parameters"]["temperature"] == 0.2 and "###" in model["parameters"]["stop"]
        assert "num_ctx" not in model["parameters"]  # no training length recorded: Ollama's default
        assert model["messages"] == [
            {"role": "user", "content": "What do you keep?"},
            {"role": "assistant", "content": "The lamp."},
        ]
        assert model["license"] == "Use it kindly.\n"
    text = ws.modelfile("tiny-bot").read_text()
    assert 'MESSAGE user """What do you keep?"""' in text and 'MESSAGE assistant """The lamp."""' in text
    assert "PARAMETER temperature 0.2" in text and 'LICENSE """Use it kindly.\n"""' in text


def test_stand_in_rejects_a_blob_whose_digest_does_not_match(tiny_gguf):
    import httpx

    with StandIn() as server:
        wrong = "sha256:" + "0" * 64
        response = httpx.post(f"{server.host}/api/blobs/{wrong}", content=tiny_gguf.read_bytes())
        assert response.status_code == 400 and "digest mismatch" in response.json()["error"]
        assert httpx.head(f"{server.host}/api/blobs/{wrong}").status_code == 404


def test_an_upstream_template_deploys_with_its_named_caveats(tiny_gguf, tiny_tokenizer_dir, gorender):
    """Qwen2.5's own template (ChatML with a default system prompt and a tool path) on the tiny ChatML model: the
    TEMPLATE writes the default system prompt, the no-tools caveat is printed and recorded everywhere, and a request
    with tools is refused by Ollama rather than silently rendered without them."""
    qwen = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates" / "Qwen-Qwen2.5-7B-Instruct.jinja"
    ws = make_export(tiny_gguf, tiny_tokenizer_dir, template=qwen.read_text(encoding="utf-8"))
    runner = CliRunner()
    with StandIn(gorender=gorender) as server:
        human = deploy("--name", "qwen-bot", "--host", server.host, "--dry-run")
        assert human.exit_code == 0, human.output
        assert "caveat no-tools:" in human.output and "chatml (default system prompt) [caveats]" in human.output
        assert "\n# caveat no-tools: the template's tool-calling path" in ws.modelfile("qwen-bot").read_text()

        result = deploy("--name", "qwen-bot", "--host", server.host, "--json", "--force")
        assert result.exit_code == 0, result.output
        out = json.loads(result.output)
        assert out["family"] == "chatml" and out["variant"] == "default system prompt"
        assert out["template_status"] == "caveats" and [c["id"] for c in out["caveats"]] == ["no-tools"]
        create = next(body for method, path, body in server.requests if path == "/api/create")
        assert "You are Qwen, created by Alibaba Cloud." in create["template"]
        assert out["check"]["ok"], out["check"]

        manifest = json.loads((ws.deploy_dir("qwen-bot") / "manifest.json").read_text())
        assert [c["id"] for c in manifest["caveats"]] == ["no-tools"] and manifest["template_status"] == "caveats"
        listed = json.loads(runner.invoke(app, ["deploy", "list", "--json"]).output)
        assert listed[0]["caveats"] == ["no-tools"]
        shown = runner.invoke(app, ["deploy", "show", "qwen-bot"])
        assert shown.exit_code == 0 and "caveat no-tools: " in shown.output

        import ollama

        client = ollama.Client(host=server.host)
        tool = {"type": "function", "function": {"name": "now", "description": "time", "parameters": {}}}
        with pytest.raises(ollama.ResponseError, match="does not support tools"):
            client.chat(model="qwen-bot", messages=[{"role": "user", "content": "Hi"}], tools=[tool])
