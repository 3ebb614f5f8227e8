"""`llmforge deploy ollama` from other sources than an export: a model already in Ollama (--from), a GGUF LoRA
adapter on its base (--adapter RUN --from BASE) and any .gguf file; the real `ollama` client against the stand-in."""

from __future__ import annotations

import json
import shutil
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

RUN = "lora-1"
WS = Path("llmforge-work/llmforge-project")  # the default workspace, relative to each test's own cwd
CUSTOM_TEMPLATE = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
QWEN = Path(__file__).resolve().parents[1] / "fixtures" / "chat_templates" / "Qwen-Qwen2.5-7B-Instruct.jinja"


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory, tiny_tokenizer_dir) -> Path:
    return build_gguf(tmp_path_factory.mktemp("gguf") / "tiny-f32.gguf", tiny_tokenizer_dir)


def deploy(*args: str):
    return CliRunner().invoke(app, ["deploy", "ollama", *args])


def pull(server: StandIn, gguf: Path, name: str = "tiny-base") -> None:
    """A model as `ollama pull` leaves it: the GGUF with its TEMPLATE and stop parameter."""
    import ollama

    client = ollama.Client(host=server.host)
    digest = client.create_blob(gguf)
    client.create(
        model=name,
        files={"model.gguf": digest},
        template=ct.CHATML.ollama_template,
        parameters={"stop": ["<|im_end|>"]},
    )


def gguf_meta(path: Path) -> dict:
    import gguf

    return {k: f.contents() for k, f in gguf.GGUFReader(str(path)).fields.items() if not k.startswith("GGUF.")}


def write_lora(path: Path, base_gguf: Path) -> Path:
    """A GGUF LoRA adapter as `export lora-gguf` writes one (general.type adapter, lora_a/lora_b pairs) for the tiny
    model's attn_q; lora_b is zero, so the model answers exactly as without it."""
    import gguf
    import numpy as np

    hidden = int(gguf_meta(base_gguf)["llama.embedding_length"])
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, 8.0)
    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.full((4, hidden), 0.01, dtype=np.float32))
    writer.add_tensor("blk.0.attn_q.weight.lora_b", np.zeros((hidden, 4), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def make_lora_export(base_gguf: Path, tokenizer_dir: Path, *, layers: int | None = None) -> Workspace:
    """A LoRA run after `export lora-gguf`: the base's HF folder (config.json matching the tiny GGUF unless `layers`
    says otherwise, tokenizer), the run's adapter folder, export/<run>/lora/<run>-lora-f32.gguf and its manifest."""
    meta = gguf_meta(base_gguf)
    ws = Workspace(WS)
    base = Path("hf-base")
    shutil.copytree(tokenizer_dir, base)
    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "num_hidden_layers": layers or int(meta["llama.block_count"]),
        "hidden_size": int(meta["llama.embedding_length"]),
        "intermediate_size": int(meta["llama.feed_forward_length"]),
        "num_attention_heads": int(meta["llama.attention.head_count"]),
        "num_key_value_heads": int(meta["llama.attention.head_count_kv"]),
    }
    (base / "config.json").write_text(json.dumps(config), encoding="utf-8")
    ws.adapter_dir(RUN).mkdir(parents=True)
    lora = ws.export_dir(RUN) / "lora" / f"{RUN}-lora-f32.gguf"
    lora.parent.mkdir(parents=True)
    write_lora(lora, base_gguf)
    entry = {"kind": "lora_adapter", "path": f"lora/{lora.name}", "verified": True, "base_model": str(base.resolve())}
    ws.export_manifest(RUN).write_text(json.dumps({"files": [], "lora_adapters": [entry]}), encoding="utf-8")
    registry.record(ws.registry_file, "run", RUN)
    registry.record(ws.registry_file, "export", f"{RUN}/lora", parent=RUN, path=str(lora))
    return ws


def test_from_builds_on_a_model_in_ollama_and_checks_it_answers(tiny_gguf):
    ws = Workspace(WS)
    Path("llmforge.yaml").write_text("deploy:\n  parameters: {temperature: 0.2}\n", encoding="utf-8")
    with StandIn() as server:
        pull(server, tiny_gguf)
        result = deploy(
            "--from", "tiny-base", "--name", "helper", "--host", server.host, "--system", "Be brief.", "--json"
        )
        assert result.exit_code == 0, result.output
        out = json.loads(result.output)
        assert out["kind"] == "from" and out["base"] == "tiny-base" and out["gguf"] is None
        assert out["template_source"] == "inherited" and out["check"]["ok"] and out["check"]["content"] == REPLY

        create = next(
            body for method, path, body in server.requests if path == "/api/create" and body["model"] == "helper"
        )
        assert create["from"] == "tiny-base" and "files" not in create and "template" not in create
        assert create["system"] == "Be brief." and create["parameters"] == {"temperature": 0.2}
        assert not any(path.startswith("/api/blobs/") for _, path, _ in server.requests[3:])  # nothing uploaded
        registered = server.models["helper:latest"]
        assert registered["template"] == ct.CHATML.ollama_template  # kept from the base
        assert registered["parameters"] == {"stop": ["<|im_end|>"], "temperature": 0.2}

    text = ws.modelfile("helper").read_text(encoding="utf-8")
    assert "\nFROM tiny-base\n" in text and 'SYSTEM """Be brief."""' in text and "TEMPLATE" not in text
    manifest = json.loads((ws.deploy_dir("helper") / "manifest.json").read_text())
    assert manifest["kind"] == "from" and manifest["base"] == "tiny-base" and manifest["export"] == "ollama:tiny-base"
    listed = json.loads(CliRunner().invoke(app, ["deploy", "list", "--json"]).output)
    assert [(r["name"], r["kind"], r["lineage"]) for r in listed] == [
        ("helper", "from", ["ollama:tiny-base", "deployment:helper"])
    ]
    table = CliRunner().invoke(app, ["deploy", "list"], env={"COLUMNS": "200"})
    assert "ollama:tiny-base" in table.output and "inherited" in table.output


def test_from_a_model_ollama_lacks_says_how_to_pull_it(tiny_gguf):
    with StandIn() as server:
        result = deploy("--from", "llama3.2", "--name", "helper", "--host", server.host)
        assert result.exit_code == 2
        text = " ".join(result.output.split())
        assert "has no model 'llama3.2'" in text and "ollama pull llama3.2" in text
        assert not any(path == "/api/create" for _, path, _ in server.requests)


def test_from_dry_run_writes_the_modelfile_and_contacts_nothing(monkeypatch):
    ws = Workspace(WS)
    monkeypatch.setenv("OLLAMA_HOST", "http://127.0.0.1:9")  # would fail if contacted
    result = deploy("--from", "llama3.2", "--name", "helper", "--system", "Be brief.", "--dry-run", "--json")
    assert result.exit_code == 0, result.output
    assert "not looked up" in " ".join(json.loads(result.output)["warnings"])
    assert "\nFROM llama3.2\n" in ws.modelfile("helper").read_text(encoding="utf-8")


def test_adapter_goes_on_the_base_it_was_trained_on(tiny_gguf, tiny_tokenizer_dir):
    ws = make_lora_export(tiny_gguf, tiny_tokenizer_dir)
    lora = (ws.export_dir(RUN) / "lora" / f"{RUN}-lora-f32.gguf").resolve()
    with StandIn() as server:
        pull(server, tiny_gguf)
        result = deploy("--adapter", RUN, "--from", "tiny-base", "--name", "tuned", "--host", server.host, "--json")
        assert result.exit_code == 0, result.output
        out = json.loads(result.output)
        assert out["kind"] == "adapter" and out["adapter"] == str(lora) and out["export_id"] == f"{RUN}/lora"
        assert out["family"] == "chatml" and out["template_source"] == "identified"  # the run's own template
        assert out["check"]["ok"] and out["check"]["content"] == REPLY
        compared = out["base_check"]["compared"]
        assert {"general.architecture", "llama.block_count", "llama.embedding_length"} <= set(compared)

        create = next(
            body for method, path, body in server.requests if path == "/api/create" and body["model"] == "tuned"
        )
        assert create["from"] == "tiny-base" and "files" not in create
        assert list(create["adapters"]) == [lora.name] and create["template"] == ct.CHATML.ollama_template
        assert server.models["tuned:latest"]["adapters"] == list(create["adapters"].values())

    text = ws.modelfile("tuned").read_text(encoding="utf-8")
    assert f"\nFROM tiny-base\nADAPTER {lora}\n" in text
    listed = json.loads(CliRunner().invoke(app, ["deploy", "list", "--json"]).output)
    assert listed[0]["lineage"] == [f"run:{RUN}", f"export:{RUN}/lora", "ollama:tiny-base", "deployment:tuned"]


def test_adapter_on_a_different_base_is_refused_before_anything_is_sent(tiny_gguf, tiny_tokenizer_dir):
    ws = make_lora_export(tiny_gguf, tiny_tokenizer_dir, layers=2)
    with StandIn() as server:
        pull(server, tiny_gguf)
        before = len(server.requests)
        result = deploy("--adapter", RUN, "--from", "tiny-base", "--name", "tuned", "--host", server.host)
        assert result.exit_code == 2
        text = " ".join(result.output.split())
        assert "not the model the adapter of 'lora-1' was trained on" in text
        assert "llama.block_count is 1, the adapter's base has 2" in text and "export gguf lora-1" in text
        assert [path for _, path, _ in server.requests[before:]] == ["/api/tags", "/api/show"]
        assert "tuned:latest" not in server.models and not ws.modelfile("tuned").exists()


def test_adapter_needs_its_base_and_its_exported_adapter(tiny_gguf, tiny_tokenizer_dir):
    no_base = deploy("--adapter", RUN, "--name", "tuned", "--dry-run")
    assert no_base.exit_code == 2 and "--from" in no_base.output
    no_export = deploy("--adapter", RUN, "--from", "tiny-base", "--name", "tuned", "--dry-run")
    assert no_export.exit_code == 2 and "llmforge export lora-gguf lora-1" in " ".join(no_export.output.split())
    both = deploy("sft-1", "--from", "tiny-base", "--name", "tuned", "--dry-run")
    assert both.exit_code == 2 and "two different models" in both.output
    itself = deploy("--from", "tiny-base", "--name", "tiny-base:latest", "--dry-run")
    assert itself.exit_code == 2 and "replace the base itself" in itself.output


def test_any_gguf_file_deploys_under_its_embedded_template(tiny_gguf):
    ws = Workspace(WS)
    with StandIn() as server:
        result = deploy(str(tiny_gguf), "--name", "file-bot", "--host", server.host, "--json")
        assert result.exit_code == 0, result.output
        out = json.loads(result.output)
        assert out["kind"] == "gguf" and out["family"] == "chatml" and out["template_status"] == "exact"
        assert {"<|im_end|>", "<|endoftext|>"} <= set(out["stop"])  # the GGUF's end-of-turn and EOS tokens
        assert out["check"]["ok"] and out["check"]["content"] == REPLY
        create = next(body for method, path, body in server.requests if path == "/api/create")
        assert create["template"] == ct.CHATML.ollama_template
    listed = json.loads(CliRunner().invoke(app, ["deploy", "list", "--json"]).output)
    assert listed[0]["kind"] == "gguf" and listed[0]["lineage"] == [
        f"gguf:{tiny_gguf.resolve()}",
        "deployment:file-bot",
    ]
    assert ws.modelfile("file-bot").is_file()


def test_a_gguf_files_template_is_refused_or_caveated_like_an_exports(tiny_tokenizer_dir, tmp_path):
    custom = build_gguf(tmp_path / "custom.gguf", tiny_tokenizer_dir, chat_template=CUSTOM_TEMPLATE)
    refused = deploy(str(custom), "--name", "file-bot", "--dry-run")
    assert refused.exit_code == 2 and "not one llmforge can reproduce" in " ".join(refused.output.split())

    qwen = build_gguf(tmp_path / "qwen.gguf", tiny_tokenizer_dir, chat_template=QWEN.read_text(encoding="utf-8"))
    caveats = deploy(str(qwen), "--name", "file-bot", "--dry-run", "--json")
    assert caveats.exit_code == 0, caveats.output
    out = json.loads(caveats.output)
    assert out["kind"] == "gguf" and out["template_status"] == "caveats"
    assert [c["id"] for c in out["caveats"]] == ["no-tools"]


def test_show_lists_the_ggufs_metadata_and_its_arrays_only_when_verbose(tiny_gguf):
    """The stand-in's /api/show follows docs/api.md: model_info carries the GGUF's keys, arrays empty unless verbose."""
    import httpx

    with StandIn() as server:
        pull(server, tiny_gguf)
        plain = httpx.post(f"{server.host}/api/show", json={"model": "tiny-base"}).json()
        verbose = httpx.post(f"{server.host}/api/show", json={"model": "tiny-base", "verbose": True}).json()
    meta = gguf_meta(tiny_gguf)
    assert plain["model_info"]["llama.block_count"] == meta["llama.block_count"]
    assert plain["model_info"]["general.parameter_count"] > 0 and plain["model_info"]["tokenizer.ggml.tokens"] == []
    assert verbose["model_info"]["tokenizer.ggml.tokens"] == list(meta["tokenizer.ggml.tokens"])
    assert plain["details"]["family"] == "llama" and plain["details"]["quantization_level"] == "F32"
