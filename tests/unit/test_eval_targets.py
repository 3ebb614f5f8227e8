"""Target specs resolve to the right artifacts by path; evaluation data, the cache and the judge's reply parse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmforge.errors import InputError, LlmforgeError, UsageError
from llmforge.evaluation import examples
from llmforge.evaluation.cache import GenerationCache, entry_key
from llmforge.evaluation.judge import parse_scores, rubric_prompt
from llmforge.evaluation.targets import resolve, split_specs
from llmforge.workspace import Workspace


def _finished(folder: Path, **extra) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "manifest.json").write_text(json.dumps({"finished_at": extra.pop("at", "2026-01-01"), **extra}))


def _adapter(folder: Path, base: str | None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": base, "peft_type": "LORA"}))


@pytest.fixture
def ws(tmp_path) -> Workspace:
    return Workspace(tmp_path / "ws")


def test_split_specs():
    assert split_specs("base, run,,gguf:q4_k_m,base") == ["base", "run", "gguf:q4_k_m"]
    assert split_specs(["base,run", "ollama:x"]) == ["base", "run", "ollama:x"]


def test_base_needs_model_name(ws):
    t = resolve("base", ws, "org/model", revision="abc")
    assert (t.kind, t.model, t.tokenizer, t.revision) == ("hf", "org/model", "org/model", "abc")
    with pytest.raises(UsageError, match="model.name is not set"):
        resolve("base", ws, None)


def test_run_defaults_to_newest_and_reads_base_from_manifest(ws):
    _finished(ws.run_dir("old"), at="2026-01-01", base_model="org/old-base")
    _adapter(ws.adapter_dir("old"), "org/old-base")
    _finished(ws.run_dir("new"), at="2026-02-01", base_model="org/manifest-base")
    _adapter(ws.adapter_dir("new"), "org/config-base")
    t = resolve("run", ws, "org/model")
    assert (t.label, t.run, t.model, t.adapter) == ("run:new", "new", "org/manifest-base", ws.adapter_dir("new"))
    assert t.tokenizer == "org/manifest-base"  # the adapter folder has no tokenizer of its own
    (ws.adapter_dir("new") / "tokenizer.json").write_text("{}")
    assert resolve("run:new", ws, None).tokenizer == str(ws.adapter_dir("new"))
    old = resolve("run:old", ws, None)
    assert old.model == "org/old-base"


def test_run_falls_back_to_adapter_config_and_to_model_folder(ws):
    _finished(ws.run_dir("a"))
    _adapter(ws.adapter_dir("a"), "org/from-adapter-config")
    assert resolve("run:a", ws, None).model == "org/from-adapter-config"
    _finished(ws.run_dir("full"), at="2026-03-01")
    ws.model_dir("full").mkdir()
    (ws.model_dir("full") / "config.json").write_text("{}")
    t = resolve("run:full", ws, None)
    assert (t.model, t.adapter, t.tokenizer) == (str(ws.model_dir("full")), None, str(ws.model_dir("full")))


def test_run_errors_name_what_is_missing(ws):
    with pytest.raises(UsageError, match="no finished training run"):
        resolve("run", ws, None)
    _finished(ws.run_dir("r"))
    with pytest.raises(UsageError, match="no run named 'nope'") as err:
        resolve("run:nope", ws, None)
    assert "r" in err.value.hint
    with pytest.raises(UsageError, match="neither adapter/ nor model/"):
        resolve("run:r", ws, None)
    _adapter(ws.adapter_dir("r"), None)
    with pytest.raises(InputError, match="does not name its base model"):
        resolve("run:r", ws, None)


def test_gguf_quant_finds_the_newest_export_and_its_tokenizer(ws):
    _finished(ws.export_dir("r1"))
    ws.gguf_file("r1", "tiny", "Q4_K_M").write_bytes(b"GGUF")
    ws.gguf_file("r1", "tiny", "f16").write_bytes(b"GGUF")
    t = resolve("gguf:Q4_K_M", ws, "org/base")
    assert (t.kind, Path(t.model).name, t.run, t.tokenizer) == ("gguf", "tiny-q4_k_m.gguf", "r1", "org/base")
    (ws.merged_dir("r1")).mkdir()
    (ws.merged_dir("r1") / "tokenizer_config.json").write_text("{}")
    assert resolve("gguf:f16", ws, "org/base").tokenizer == str(ws.merged_dir("r1"))
    with pytest.raises(UsageError, match=r"no \*-q8_0.gguf") as err:
        resolve("gguf:q8_0", ws, None)
    assert "tiny-f16.gguf" in err.value.message and "--quant q8_0" in err.value.hint


def test_gguf_without_export_says_how_to_make_one(ws):
    with pytest.raises(UsageError, match="no GGUF export"):
        resolve("gguf:q4_k_m", ws, None)


def test_ollama_host_from_config_env_or_default(ws, monkeypatch):
    assert resolve("ollama:m", ws, None).url == "http://127.0.0.1:11434"
    monkeypatch.setenv("OLLAMA_HOST", "10.0.0.5:11434")
    t = resolve("ollama:m", ws, None)
    assert (t.kind, t.model, t.url) == ("ollama", "m", "http://10.0.0.5:11434")
    assert resolve("ollama:m", ws, None, ollama_host="http://h:1").url == "http://h:1"
    with pytest.raises(UsageError):
        resolve("ollama:", ws, None)


def test_http_endpoints(ws):
    t = resolve("http://127.0.0.1:8000", ws, None)
    assert (t.kind, t.url, t.model) == ("http", "http://127.0.0.1:8000/v1", None)
    t = resolve("http://h:1/v1/?model=my-model", ws, None)
    assert (t.url, t.model, t.label) == ("http://h:1/v1", "my-model", "http://h:1/v1/?model=my-model")


def test_paths_and_unknown_specs(ws, tmp_path):
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    assert resolve(str(gguf), ws, None).kind == "gguf"
    folder = tmp_path / "model"
    folder.mkdir()
    with pytest.raises(UsageError, match="neither config.json nor adapter_config.json"):
        resolve(str(folder), ws, None)
    (folder / "config.json").write_text("{}")
    assert resolve(str(folder), ws, None).model == str(folder.resolve())
    with pytest.raises(UsageError, match="unknown target 'bogus'"):
        resolve("bogus", ws, None)


def test_fingerprint_follows_the_weights(ws, tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"one")
    first = resolve(str(folder), ws, None).fingerprint()
    assert resolve(str(folder), ws, None).fingerprint() == first
    (folder / "model.safetensors").write_bytes(b"two")
    assert resolve(str(folder), ws, None).fingerprint() != first


def test_examples_prompt_is_conversation_up_to_last_assistant_turn(tmp_path):
    data = tmp_path / "test.jsonl"
    rows = [
        {"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "q1"},
                      {"role": "assistant", "content": "a1"}, {"role": "user", "content": "q2"},
                      {"role": "assistant", "content": "a2"}]},
        {"prompt": "q3", "chosen": "a3", "rejected": "bad"},
        {"text": "just text"},
    ]
    data.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    items = examples.load(data)
    assert [e.line for e in items] == [1, 2, 3]
    assert items[0].prompt == rows[0]["messages"][:4] and items[0].reference == "a2"
    assert items[1].messages == [{"role": "user", "content": "q3"}, {"role": "assistant", "content": "a3"}]
    assert items[1].reference == "a3"
    assert items[2].text == "just text" and not items[2].generates
    assert len(examples.load(data, limit=2)) == 2


def test_examples_bad_input_names_file_and_line(tmp_path):
    data = tmp_path / "test.jsonl"
    data.write_text('{"messages": [{"role": "user", "content": "q"}]}\n{"messages": [{"role": "bot"}]}\n')
    with pytest.raises(InputError, match=r"test.jsonl:2: messages\[0\]"):
        examples.load(data)
    data.write_text("{not json\n")
    with pytest.raises(InputError, match="test.jsonl:1: not valid JSON"):
        examples.load(data)
    with pytest.raises(InputError, match="not found") as err:
        examples.load(tmp_path / "missing.jsonl")
    assert "llmforge data prepare" in err.value.hint


def test_cache_round_trip_and_damaged_lines(tmp_path):
    key = entry_key([{"role": "user", "content": "q"}], {"max_new_tokens": 8, "temperature": 0.0})
    assert key != entry_key([{"role": "user", "content": "q"}], {"max_new_tokens": 9, "temperature": 0.0})
    cache = GenerationCache(tmp_path, "fp")
    assert cache.get(key) is None
    cache.put(key, {"text": "a", "new_tokens": 1, "seconds": 0.1})
    with open(tmp_path / "fp.jsonl", "a") as fh:
        fh.write('{"key": "cut sho')
    again = GenerationCache(tmp_path, "fp")
    assert again.get(key) == {"text": "a", "new_tokens": 1, "seconds": 0.1}
    assert GenerationCache(tmp_path, "other").get(key) is None


def test_judge_prompt_and_reply_parsing():
    messages = rubric_prompt(["relevance", "accuracy"], 5, [{"role": "user", "content": "q"}], "ref", "ans")
    assert '"relevance": <1-5>' in messages[0]["content"] and "ANSWER:\nans" in messages[1]["content"]
    assert parse_scores('Sure! {"relevance": 4, "accuracy": 2}', ["relevance", "accuracy"], 5) == {
        "relevance": 4.0, "accuracy": 2.0}
    with pytest.raises(LlmforgeError, match="no score 1-5 for 'accuracy'"):
        parse_scores('{"relevance": 4, "accuracy": 9}', ["relevance", "accuracy"], 5)
    with pytest.raises(LlmforgeError, match="did not answer a JSON object"):
        parse_scores("great answer", ["relevance"], 5)


def test_run_defaults_to_the_newest_finished_fine_tune_of_model_name(ws):
    """A newer run from scratch or of another base is not the run a base-vs-run comparison means."""
    _finished(ws.run_dir("lora-400"), at="2026-01-01", base_model="org/model")
    _adapter(ws.adapter_dir("lora-400"), "org/model")
    _finished(ws.run_dir("scratch-40"), at="2026-02-01", base_model="scratch llama")
    (ws.model_dir("scratch-40")).mkdir(parents=True)
    (ws.model_dir("scratch-40") / "config.json").write_text("{}")
    _finished(ws.run_dir("other-base"), at="2026-03-01", base_model="org/other")
    _adapter(ws.adapter_dir("other-base"), "org/other")
    assert resolve("run", ws, "org/model").run == "lora-400"
    assert resolve("run", ws, "org/unknown").run == "other-base"  # no fine-tune of it: the newest usable run
    assert ws.latest_run() == "other-base"
