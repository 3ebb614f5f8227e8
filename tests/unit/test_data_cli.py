"""`llmforge data ...` wiring in-process: exit codes, --json, config flags, errors as one line and a hint."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from typer.testing import CliRunner

from llmforge.cli.app import app

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fakes.openai_server import FakeOpenAI  # noqa: E402

runner = CliRunner()
CHAT = [{"role": "user", "content": "What is the capital of France?"}, {"role": "assistant", "content": "Paris."}]


def write(path: str, rows: list) -> str:
    Path(path).write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def good(n: int = 20) -> str:
    return write("in.jsonl", [{"messages": [{"role": "user", "content": f"Question number {i}?"},
                                            {"role": "assistant", "content": f"Answer number {i}."}]}
                              for i in range(n)])  # fmt: skip


def test_prepare_json_and_table(tmp_path):
    result = runner.invoke(app, ["data", "prepare", good(), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["counts"]["written"] == 20
    assert Path("llmforge-work/llmforge-project/data/train.jsonl").exists()
    again = runner.invoke(app, ["data", "prepare", "in.jsonl"])
    assert again.exit_code == 2 and "--force" in again.output
    forced = runner.invoke(app, ["data", "prepare", "in.jsonl", "--force"])
    assert forced.exit_code == 0 and "train" in forced.output


def test_prepare_an_unreadable_file_exits_2_or_is_skipped_by_name(tmp_path):
    Path("d").mkdir()
    write("d/good.jsonl", [{"messages": CHAT}])
    Path("d/bad.parquet").write_bytes(b"PAR1 not parquet PAR1")
    result = runner.invoke(app, ["data", "prepare", "d"])
    assert result.exit_code == 2, result.output
    assert "1 unreadable file; nothing written" in result.output
    assert "d/bad.parquet: file: cannot read: " in result.output
    assert "hint: replace or remove the unreadable files" in result.output and "Traceback" not in result.output
    skipped = runner.invoke(app, ["data", "prepare", "d", "-s", "data.on_error=skip"])
    assert skipped.exit_code == 0, skipped.output
    assert "unreadable file skipped: d/bad.parquet: cannot read: Parquet" in " ".join(skipped.output.split())


def test_prepare_reads_inputs_from_config_and_set(tmp_path):
    good()
    Path("llmforge.yaml").write_text("project:\n  name: demo\ndata:\n  inputs: [in.jsonl]\n  split: {seed: 3}\n")
    result = runner.invoke(app, ["data", "prepare", "--json", "-s", "data.split.seed=9"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["split"]["seed"] == 9
    assert Path("llmforge-work/demo/data/val.jsonl").exists()


def test_prepare_bad_data_exits_2_listing_problems(tmp_path):
    write("bad.jsonl", [{"messages": CHAT}, "{nope", {"messages": [CHAT[0]]}])
    result = runner.invoke(app, ["data", "prepare", "bad.jsonl"])
    assert result.exit_code == 2
    assert "bad.jsonl:2: json: invalid JSON" in result.output
    assert "bad.jsonl:3: messages: no assistant turn" in result.output
    assert "Traceback" not in result.output
    assert not Path("llmforge-work/llmforge-project/data/train.jsonl").exists()
    skipped = runner.invoke(app, ["data", "prepare", "bad.jsonl", "-s", "data.on_error=skip", "--json"])
    assert skipped.exit_code == 0 and json.loads(skipped.output)["counts"]["rejected"] == 2


def test_validate_exit_codes_and_json(tmp_path):
    write("bad.jsonl", [{"messages": CHAT}, {"messages": [CHAT[0], CHAT[0], CHAT[1]]}])
    result = runner.invoke(app, ["data", "validate", "bad.jsonl", "--json"])
    assert result.exit_code == 2
    data = json.loads(result.output)
    assert data["ok"] is False and data["problems"] == ["bad.jsonl:2: messages[1].role: two user turns in a row"]
    assert runner.invoke(app, ["data", "validate", good()]).exit_code == 0
    missing = runner.invoke(app, ["data", "validate", "nope.jsonl"])
    assert missing.exit_code == 2 and "input not found" in missing.output


def test_stats_and_convert(tmp_path):
    runner.invoke(app, ["data", "prepare", good()])
    stats = runner.invoke(app, ["data", "stats", "--json"])
    assert stats.exit_code == 0, stats.output
    data = json.loads(stats.output)
    assert data["records"] == 20 and data["roles"] == {"user": 20, "assistant": 20}
    assert data["length"]["unit"] == "characters" and Path(data["plot"]).is_file()
    table = runner.invoke(app, ["data", "stats", "in.jsonl", "--plot", "h.png"])
    assert table.exit_code == 0 and "length (characters)" in table.output and Path("h.png").is_file()
    for target in ("chatml", "alpaca", "sharegpt", "openai", "text"):
        out = f"out.{target}.jsonl"
        result = runner.invoke(app, ["data", "convert", "in.jsonl", "--to", target, "-o", out, "--json"])
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["written"] == 20
    first = json.loads(Path("out.sharegpt.jsonl").read_text().splitlines()[0])
    assert first == {"conversations": [{"from": "human", "value": "Question number 0?"},
                                       {"from": "gpt", "value": "Answer number 0."}]}  # fmt: skip
    chatml = json.loads(Path("out.chatml.jsonl").read_text().splitlines()[0])["text"]
    assert (
        chatml == "<|im_start|>user\nQuestion number 0?<|im_end|>\n<|im_start|>assistant\nAnswer number 0.<|im_end|>\n"
    )
    assert json.loads(Path("out.alpaca.jsonl").read_text().splitlines()[0])["output"] == "Answer number 0."
    # round trip: the converted files read back as the same conversations
    back = runner.invoke(app, ["data", "validate", "out.sharegpt.jsonl", "out.alpaca.jsonl", "--json"])
    assert back.exit_code == 0 and json.loads(back.output)["kinds"] == {"messages": 40}
    refused = runner.invoke(app, ["data", "convert", "in.jsonl", "--to", "openai", "-o", "out.openai.jsonl"])
    assert refused.exit_code == 2
    unknown = runner.invoke(app, ["data", "convert", "in.jsonl", "--to", "yaml"])
    assert unknown.exit_code == 2 and "unknown target format" in unknown.output


def test_multi_turn_chat_is_not_representable_as_alpaca(tmp_path):
    write("multi.jsonl", [{"messages": CHAT + [{"role": "user", "content": "And Spain?"},
                                               {"role": "assistant", "content": "Madrid."}]}])  # fmt: skip
    result = runner.invoke(app, ["data", "convert", "multi.jsonl", "--to", "alpaca", "--json"])
    data = json.loads(result.output)
    assert data["written"] == 0 and data["skipped"] == 1 and "multi-turn" in data["examples"][0]


def test_stats_without_data_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["data", "stats"])
    assert result.exit_code == 2 and "data prepare" in result.output


def test_preview_without_model_is_a_usage_error(tmp_path):
    good()
    result = runner.invoke(app, ["data", "preview", "in.jsonl"])
    assert result.exit_code == 2 and "model.name" in result.output


def test_generate_json(tmp_path):
    Path("doc.md").write_text("# Rivers\n\nThe Danube flows through ten countries before reaching the Black Sea.\n")
    with FakeOpenAI() as fake:
        result = runner.invoke(
            app,
            [
                "data",
                "generate",
                "--from",
                "doc.md",
                "--endpoint",
                fake.url,
                "--model",
                "m",
                "--json",
                "-o",
                "qa.jsonl",
            ],  # fmt: skip
        )
        assert result.exit_code == 0, result.output
        assert json.loads(result.output)["pairs"] == 1
        shown = runner.invoke(app, ["data", "generate", "--from", "doc.md", "--endpoint", fake.url, "--model", "m",
                                    "-o", "qa.jsonl"])  # fmt: skip
        assert shown.exit_code == 0 and "1 chunks done earlier" in shown.output
    assert json.loads(Path("qa.jsonl").read_text())["metadata"]["source"] == "doc.md"
