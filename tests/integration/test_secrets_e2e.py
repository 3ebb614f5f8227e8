"""A planted API key goes through data generate -> data prepare -> train -> export gguf -> serve (a real start
when llama-cpp-python is installed, else --dry-run) and must appear in no file of the workspace and in no output.

The key arrives the ways a user gives it: LLMFORGE_DATA__GENERATE__API_KEY and LLMFORGE_SERVE__API_KEY in the
environment, `-s serve.api_key=...` and `--api-key ...` on the command line. Commands run in-process (CliRunner)
with sys.argv set to the command, as a real process would see it, since manifests record argv."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fakes.openai_server import FakeOpenAI  # noqa: E402
from serve_helpers import read_banner  # noqa: E402
from train_data import chat_rows, write_jsonl  # noqa: E402
from typer.testing import CliRunner  # noqa: E402

from llmforge.cli.app import app  # noqa: E402
from llmforge.export import gguf_export  # noqa: E402

KEY = "sk-planted-e2e-7d3a91c0b5"
ROOT = Path(__file__).resolve().parents[2]
DOC = (
    "# Lighthouses\n\nThe Eddystone lighthouse stands on dangerous rocks fourteen kilometres south of Plymouth.\n"
    "Its first tower was built of wood by Henry Winstanley and finished in the year 1698.\n\n## Keepers\n\n"
    "Keepers trimmed the lamp wicks every four hours through the night to keep the light bright.\n"
)


def files_holding(root: Path, needle: bytes) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and needle in p.read_bytes())


def test_a_planted_key_reaches_no_file_and_no_output(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LLMFORGE_DATA__GENERATE__API_KEY", KEY)
    monkeypatch.setenv("LLMFORGE_SERVE__API_KEY", KEY)
    ws = tmp_path / "ws"
    common = ["-s", f"project.workdir={ws}", "-s", f"model.name={tiny_llama_dir}"]
    outputs: list[str] = []

    def llmforge(*args: str) -> str:
        monkeypatch.setattr(sys, "argv", ["llmforge", *args])
        out = CliRunner().invoke(app, list(args))
        outputs.append(out.output)
        assert out.exit_code == 0, out.output
        return out.output

    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "lights.md").write_text(DOC)
    with FakeOpenAI() as server:
        llmforge("data", "generate", "--from", str(tmp_path / "docs"), "--endpoint", server.url, "--model", "fake",
                 *common)  # fmt: skip
        assert server.authorizations and set(server.authorizations) == {f"Bearer {KEY}"}  # the key was used
    extra = write_jsonl(tmp_path / "chat.jsonl", chat_rows(24))
    llmforge("data", "prepare", str(ws / "data" / "generated.jsonl"), str(extra), *common)
    llmforge("train", "--method", "lora", *common, "-s", "train.max_steps=2", "-s", "train.run_name=r1",
             "-s", f"serve.api_key={KEY}", "-s", "train.max_length=64")  # fmt: skip
    llmforge("export", "gguf", "r1", "--quant", "f16", "--no-verify", *common, f"--set=serve.api_key={KEY}")
    llmforge("config", "show", "--sources", *common)
    llmforge("config", "show", "--json", *common)
    gguf = ws / "export" / "r1" / "r1-f16.gguf"
    assert gguf.is_file() and (ws / "runs" / "r1" / "manifest.json").is_file()

    if gguf_export.has_llama_cpp():
        # a real start: serve/manifest.json is written when the server starts
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMFORGE_")}
        env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", LLMFORGE_DATA__GENERATE__API_KEY=KEY)
        proc = subprocess.Popen(
            [sys.executable, "-m", "llmforge", "serve", "--model", str(gguf), "--port", "0", "--json",
             "--api-key", KEY, "-s", f"project.workdir={ws}", "-s", "serve.log_conversations=true"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path,
        )  # fmt: skip
        try:
            info, banner = read_banner(proc)
            url = info["url"]
            # one logged chat exchange, authorised with the key: the conversation log must not keep it
            reply = httpx.post(url + "/v1/chat/completions", headers={"Authorization": f"Bearer {KEY}"}, timeout=60,
                               json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})  # fmt: skip
            assert reply.status_code == 200, reply.text
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=60)
            stdout = banner + stdout
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        outputs += [stdout, stderr]
        manifest = json.loads((ws / "serve" / "manifest.json").read_text())
        assert "--api-key" in manifest["platform"]["argv"]  # argv is recorded, with the value masked
        assert list((ws / "serve" / "conversations").glob("*.jsonl"))  # the exchange was logged
    else:
        llmforge("serve", "--dry-run", "--api-key", KEY, *common)

    assert files_holding(tmp_path, KEY.encode()) == []
    assert [text for text in outputs if KEY in text] == []
    run_manifest = json.loads((ws / "runs" / "r1" / "manifest.json").read_text())
    assert "serve.api_key=***" in run_manifest["platform"]["argv"]
