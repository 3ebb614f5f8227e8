"""Every reshaped stage has the same two parts (docs/architecture.md): stage.py with plan() -> <Stage>Plan and
run(plan) -> <Stage>Result, frozen dataclasses whose as_dict() is the command's JSON; importing it stays light."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import subprocess
import sys

import pytest

STAGES = [("training", "Train"), ("export", "Export"), ("evaluation", "Eval"), ("deployment", "Deploy"),
          ("serving", "Serve"), ("data", "Data")]  # fmt: skip
# Other commands of a stage, in the same module: (package, verb suffix, class prefix).
SUB_COMMANDS = [("export", "merge", "Merge"), ("export", "lora_gguf", "LoraGguf"), ("data", "validate", "Validate"),
                ("data", "select", "Select"), ("data", "augment", "Augment"), ("data", "convert", "Convert"),
                ("data", "stats", "Stats"), ("data", "preview", "Preview"), ("data", "generate", "Generate")]


@pytest.mark.parametrize(("package", "prefix"), STAGES)
def test_stage_module_has_plan_and_run_returning_frozen_dataclasses(package, prefix):
    stage = importlib.import_module(f"llmforge.{package}.stage")
    verbs = importlib.import_module(f"llmforge.{package}")
    for name in ("plan", "run"):
        assert callable(getattr(stage, name)) and callable(getattr(verbs, name)), f"{package}.{name}"
    assert list(inspect.signature(stage.run).parameters)[0] == "plan"
    for kind in ("Plan", "Result"):
        cls = getattr(stage, prefix + kind)
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, cls
        assert callable(cls.as_dict), cls


@pytest.mark.parametrize(("package", "verb", "prefix"), SUB_COMMANDS)
def test_sub_commands_have_plan_and_run_returning_frozen_dataclasses(package, verb, prefix):
    stage = importlib.import_module(f"llmforge.{package}.stage")
    verbs = importlib.import_module(f"llmforge.{package}")
    for name in (f"plan_{verb}", f"run_{verb}"):
        assert callable(getattr(stage, name)) and callable(getattr(verbs, name)), f"{package}.{name}"
    assert list(inspect.signature(getattr(stage, f"run_{verb}")).parameters)[0] == "plan"
    for kind in ("Plan", "Result"):
        cls = getattr(stage, prefix + kind)
        assert dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen, cls
        assert callable(cls.as_dict), cls


def test_stage_modules_import_no_heavy_library():
    code = ("import sys, llmforge.training.stage, llmforge.export.stage, llmforge.evaluation.stage, "
            "llmforge.deployment.stage, llmforge.serving.stage, llmforge.data.stage; "
            "print(sorted(m for m in ('torch', 'transformers', 'peft', 'trl', 'datasets', 'gguf', 'llama_cpp', "
            "'ollama', 'fastapi', 'uvicorn') if m in sys.modules))")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# `llmforge train --dry-run --json`, key for key in this order: scripts read it, and the shape must not move it.
TRAIN_PLAN_KEYS = [
    "dry_run", "is_main", "run", "method", "backend", "backend_why", "four_bit", "base_model", "parameters",
    "trainable_parameters", "trainable_share", "train_examples", "val_examples", "data_kind", "tokens_per_epoch",
    "steps_per_epoch", "steps", "effective_batch", "learning_rate", "precision", "processes", "memory_estimate",
    "chat_template", "chat_template_family", "loss_mask", "chat_template_date", "records_split_per_turn",
    "end_of_turn_checked", "overlong", "resume_from", "resume_skipped", "init_from", "notes",
]  # fmt: skip
TRAIN_RESULT_KEYS = [
    "run", "run_dir", "method", "backend", "backend_why", "steps", "epochs", "first_loss", "final_loss",
    "train_loss", "final_eval_loss", "tokens_seen", "train_seconds", "resumed_from", "resume_skipped", "init_from",
    "removed_temporaries", "overlong", "is_main", "output", "manifest", "wall_seconds",
]  # fmt: skip


def _filled(cls, **given):
    values = {f.name: None for f in dataclasses.fields(cls)}
    return cls(**{**values, **given})


def test_train_plan_json_keeps_its_keys_and_order():
    from llmforge.training.stage import TrainPlan

    plan = _filled(TrainPlan, run=None, is_main=True)
    shown = plan.as_dict()
    assert list(shown) == TRAIN_PLAN_KEYS
    assert shown["dry_run"] is True and shown["run"] == "<new>"  # a run named as it starts


def test_train_result_json_keeps_its_keys_and_order_and_other_ranks_omit_the_outputs():
    from llmforge.training.stage import TrainResult

    assert list(_filled(TrainResult, is_main=True).as_dict()) == TRAIN_RESULT_KEYS
    assert list(_filled(TrainResult, is_main=False).as_dict()) == TRAIN_RESULT_KEYS[:-3]


def test_export_and_eval_json_are_the_dry_run_plan_and_the_report_plus_folder(tmp_path):
    from llmforge.evaluation.stage import EvalResult
    from llmforge.export.stage import ExportPlan, ExportResult

    plan = _filled(ExportPlan, run="r", name="r", files=["r-f16.gguf"], verify=True)
    assert list(plan.as_dict()) == ["dry_run", "run", "name", "source", "merge_first", "converter", "converter_note",
                                    "output_dir", "files", "verify"]  # fmt: skip
    done = ExportResult(manifest={"stage": "export gguf", "run": "r", "files": []}, output_dir="out",
                        removed_temporaries=0, replaced_leftovers=[])  # fmt: skip
    assert list(done.as_dict()) == ["stage", "run", "files", "output_dir", "removed_temporaries", "replaced_leftovers"]
    report = EvalResult(report={"stamp": "s", "failed": {}}, folder=tmp_path)
    assert report.as_dict() == {"stamp": "s", "failed": {}, "folder": str(tmp_path)} and report.exit_code == 0


# `llmforge deploy ollama --json` (and its --dry-run --json), key for key in this order.
DEPLOY_KEYS = [
    "name", "modelfile", "create_command", "run_command", "gguf", "export_id", "family", "template_source",
    "template_status", "variant", "caveats", "stop", "parameters", "dry_run", "host", "digest", "manifest", "check",
    "warnings", "kind", "base", "adapter", "base_check",
]  # fmt: skip


def test_deploy_json_keeps_its_keys_and_order_and_a_dry_run_says_what_it_left_unchecked(tmp_path):
    from llmforge.deployment.stage import DeployPlan, DeployResult

    plan = _filled(DeployPlan, name="tuned", modelfile=tmp_path / "Modelfile", warnings=["w"], kind="adapter",
                   base="llama3.2", adapter=tmp_path / "lora.gguf", caveats=[], stop=[])  # fmt: skip
    shown = plan.as_dict()
    assert list(shown) == DEPLOY_KEYS
    assert shown["dry_run"] is True and shown["host"] is None and shown["check"] is None
    assert shown["modelfile"] == str(tmp_path / "Modelfile")  # paths print as strings
    assert shown["warnings"][0] == "w" and "'llama3.2' was not looked up" in shown["warnings"][1]
    assert "adapter's base is unchecked" in shown["warnings"][1] and plan.warnings == ["w"]
    done = _filled(DeployResult, name="tuned", modelfile=tmp_path / "Modelfile", host="http://h:1", warnings=["w"],
                   check={"ok": True})  # fmt: skip
    shown = done.as_dict()
    assert list(shown) == DEPLOY_KEYS
    assert shown["dry_run"] is False and shown["host"] == "http://h:1" and shown["warnings"] == ["w"]


def test_merge_and_lora_gguf_json_are_the_manifest_plus_what_the_run_tidied():
    from llmforge.export.stage import LoraGgufResult, MergeResult

    merged = MergeResult(manifest={"stage": "export merge", "output": "o", "adapters": ["a"], "base_model": "b",
                                   "dtype": "float32", "merge_max_abs_diff": 0.0}, removed_temporaries=2)  # fmt: skip
    assert list(merged.as_dict()) == ["stage", "output", "adapters", "base_model", "dtype", "merge_max_abs_diff",
                                      "removed_temporaries"]  # fmt: skip
    assert merged.adapters == ["a"] and merged.dtype == "float32"
    lora = LoraGgufResult(manifest={"stage": "export lora-gguf", "run": "r", "files": [], "lora_adapters": [{}]},
                          output_dir="out", removed_temporaries=0, replaced_leftovers=[])  # fmt: skip
    assert list(lora.as_dict()) == ["stage", "run", "files", "lora_adapters", "output_dir", "removed_temporaries",
                                    "replaced_leftovers"]  # fmt: skip
    assert lora.run == "r" and lora.lora_adapters == [{}]


# `llmforge serve --dry-run --json`, key for key in this order: one model, or several (serve.models, variants).
SERVE_ONE_KEYS = ["engine", "model", "path", "base_model", "host", "port", "api_key_required", "warning"]
SERVE_SEVERAL_KEYS = ["models", "variants", "variant_group", "host", "port", "api_key_required", "warning"]
_SERVABLE = importlib.util.find_spec("llama_cpp") and importlib.util.find_spec("fastapi")


def test_serve_plan_json_keeps_its_keys_and_order(tmp_path):
    from llmforge.serving.stage import ServePlan, ServeResult
    from llmforge.serving.target import Target, Variant

    one = _filled(ServePlan, models=[Target("llamacpp", tmp_path / "a.gguf", "a")], several=False, host="::1")
    assert list(one.as_dict()) == SERVE_ONE_KEYS
    assert one.as_dict()["path"] == str(tmp_path / "a.gguf") and one.as_dict()["host"] == "::1"
    several = _filled(ServePlan, models=[Target("llamacpp", tmp_path / "a.gguf", "a"),
                                         Target("transformers", tmp_path / "b", "b", base_model="base")],
                      variants=[Variant("A", "a", 1.0)], several=True, variant_group="ab")  # fmt: skip
    shown = several.as_dict()
    assert list(shown) == SERVE_SEVERAL_KEYS and shown["variant_group"] == "ab"
    assert shown["models"][1] == {"engine": "transformers", "model": "b", "path": str(tmp_path / "b"),
                                  "base_model": "base"}  # fmt: skip
    assert shown["variants"] == [{"name": "A", "model": "a", "weight": 1.0}]
    done = ServeResult(url="http://127.0.0.1:8000", models=["a"], manifest=None)
    assert done.as_dict() == {"url": "http://127.0.0.1:8000", "models": ["a"], "manifest": None}


@pytest.mark.skipif(not _SERVABLE, reason="needs the serve and llamacpp extras installed (found, not imported)")
def test_serve_plan_resolves_the_models_without_loading_one_or_opening_a_socket(tmp_path):
    # A fresh interpreter: planning a GGUF (one, then two with a variant on an open host) imports no engine, web
    # framework or server, and any socket opened fails the probe.
    for name in ("a-q8_0.gguf", "b-f16.gguf"):
        (tmp_path / name).write_bytes(b"GGUF")
    code = f"""
import json, socket, sys
def refuse(*a, **k):
    raise AssertionError("plan() opened a socket")
socket.socket = refuse
from llmforge.config import load_config
from llmforge.serving import plan
from llmforge.workspace import Workspace
ws = Workspace({str(tmp_path / "ws")!r})
one = plan(load_config(None, ["serve.model={tmp_path / "a-q8_0.gguf"}"], {{}}).config.model,
           load_config(None, ["serve.model={tmp_path / "a-q8_0.gguf"}"], {{}}).config.serve, ws)
cfg = load_config(None, ["serve.models=[{tmp_path / "a-q8_0.gguf"}, {tmp_path / "b-f16.gguf"}]",
                         "serve.variants=[{{name: A, model: {tmp_path / "b-f16.gguf"}, weight: 2}}]",
                         "serve.host=0.0.0.0", "serve.insecure=true"], {{}}).config
several = plan(cfg.model, cfg.serve, ws)
heavy = sorted(m for m in ("torch", "transformers", "llama_cpp", "fastapi", "uvicorn") if m in sys.modules)
print(json.dumps([one.as_dict(), several.as_dict(), heavy]))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    one, several, heavy = json.loads(out.stdout.strip().splitlines()[-1])
    assert heavy == []
    assert one == {"engine": "llamacpp", "model": "a-q8_0", "path": str(tmp_path / "a-q8_0.gguf"), "base_model": None,
                   "host": "127.0.0.1", "port": 8000, "api_key_required": False, "warning": None}  # fmt: skip
    assert list(several) == SERVE_SEVERAL_KEYS and [m["model"] for m in several["models"]] == ["a-q8_0", "b-f16"]
    assert several["variants"] == [{"name": "A", "model": "b-f16", "weight": 2.0}]
    assert several["variant_group"] == "ab"  # the config's default group name
    assert "WITHOUT an API key" in several["warning"]


def _data_inputs(tmp_path, rows):
    import json

    path = tmp_path / "in.jsonl"
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def _chats(n):
    return [{"messages": [{"role": "user", "content": f"Question number {i} here?"},
                          {"role": "assistant", "content": f"The answer to question {i} is long enough."}]}
            for i in range(n)]  # fmt: skip


def test_data_plan_decides_without_reading_a_record_and_run_does_the_work(tmp_path):
    from llmforge import data
    from llmforge.config.data import DataConfig
    from llmforge.config.model import ModelConfig
    from llmforge.errors import InputError
    from llmforge.workspace import Workspace

    source = _data_inputs(tmp_path, [*_chats(3), "{not json"])
    ws = Workspace(tmp_path / "work")
    plan = data.plan(DataConfig(inputs=[str(source)]), ModelConfig(), ws)
    assert plan.inputs == [str(source)] and plan.output_dir == str(ws.data_dir) and plan.on_error == "fail"
    assert not ws.data_dir.exists()  # nothing written, and the bad record is run's to find
    assert list(plan.as_dict())[:7] == ["dry_run", "inputs", "ignored_inputs", "format", "on_error", "output_dir",
                                        "tokenizer"]  # fmt: skip
    with pytest.raises(InputError, match="1 invalid record"):
        data.run(plan)


def test_data_result_json_is_the_report_json_key_for_key(tmp_path):
    import json

    from llmforge import data
    from llmforge.config.data import DataConfig
    from llmforge.config.model import ModelConfig
    from llmforge.data.stage import DataResult
    from llmforge.workspace import Workspace

    ws = Workspace(tmp_path / "work")
    result = data.run(data.plan(DataConfig(inputs=[str(_data_inputs(tmp_path, _chats(20)))]), ModelConfig(), ws))
    assert isinstance(result, DataResult)
    written = json.loads(ws.data_report_json.read_text())
    assert list(result.as_dict()) == list(written) and result.as_dict() == written
    assert result.counts["read"] == 20 and result.dataset_kind == "messages" and result.output_dir == ws.data_dir
    assert result.unreadable == [] and result.rejected_file is None and result.report_md == ws.data_report_md


def test_data_validate_plan_resolves_the_inputs_and_its_json_keeps_its_keys_and_order(tmp_path):
    from llmforge import data
    from llmforge.config.data import DataConfig

    source = _data_inputs(tmp_path, [*_chats(2), "{not json"])
    plan = data.plan_validate(DataConfig(inputs=[str(tmp_path)]))
    assert plan.inputs == [str(source)] and plan.as_dict() == {"dry_run": True, "inputs": [str(source)],
                                                               "format": "auto"}  # fmt: skip
    result = data.run_validate(plan)
    shown = result.as_dict()
    assert list(shown) == ["files", "records", "valid", "problems", "problem_count", "kinds", "formats", "warnings",
                           "unreadable", "ok"]  # fmt: skip
    assert shown["ok"] is False and shown["records"] == 3 and shown["problems"][0].startswith(f"{source}:3: ")


def test_data_select_plan_decides_the_size_and_folder_before_writing_and_its_json_keeps_its_keys(tmp_path):
    from llmforge import data
    from llmforge.errors import UsageError
    from llmforge.workspace import Workspace

    ws = Workspace(tmp_path / "work")
    ws.data_dir.mkdir(parents=True)
    (ws.data_dir / "train.jsonl").write_text((tmp_path / _data_inputs(tmp_path, _chats(12)).name).read_text())
    plan = data.plan_select(None, ws, size=4)
    assert (plan.selected, plan.available, plan.output) == (4, 12, str(ws.root / "data-select-4"))
    assert list(plan.as_dict()) == ["dry_run", "source", "output", "selected", "available", "seed", "force"]
    assert not (ws.root / "data-select-4").exists()  # decided, not written
    result = data.run_select(plan)
    assert list(result.as_dict()) == ["source", "output", "dataset_id", "parent", "selected", "available", "seed",
                                      "coverage", "copied"]  # fmt: skip
    assert result.selected == 4 and (ws.root / "data-select-4" / "train.jsonl").read_text().count("\n") == 4
    with pytest.raises(UsageError, match="already exists"):
        data.plan_select(None, ws, size=4)


def test_data_augment_plan_refuses_before_any_request_and_its_result_json_keeps_its_keys(tmp_path):
    from llmforge import data
    from llmforge.config.data import DataConfig
    from llmforge.data.stage import AugmentResult
    from llmforge.errors import UsageError
    from llmforge.workspace import Workspace

    ws = Workspace(tmp_path / "work")
    ws.data_dir.mkdir(parents=True)
    (ws.data_dir / "train.jsonl").write_text((tmp_path / _data_inputs(tmp_path, _chats(3)).name).read_text())
    cfg = DataConfig(augment={"paraphrases": 2, "refusals": 5, "batch": 2, "scope": "routers"},
                     generate={"endpoint": "http://127.0.0.1:9/v1", "model": "m"})  # fmt: skip
    plan = data.plan_augment(cfg, ws)  # nothing listens on port 9: planning contacts nothing
    assert plan.requested == {"paraphrases": 6, "refusals": 5} and plan.requests == 3 + 3
    assert plan.output == str(ws.data_dir / "augmented") and not (ws.data_dir / "augmented").exists()
    (ws.data_dir / "augmented").mkdir()
    with pytest.raises(UsageError, match="already exists"):
        data.plan_augment(cfg, ws)
    assert list(_filled(AugmentResult).as_dict()) == [
        "output", "source", "requested", "received", "kept", "duplicates", "requests", "retries", "failed",
        "bad_json", "skipped_records", "train", "errors",
    ]  # fmt: skip


def test_data_convert_plan_refuses_before_writing_and_its_result_json_keeps_its_keys(tmp_path):
    from llmforge import data
    from llmforge.errors import UsageError
    from llmforge.workspace import Workspace

    source = _data_inputs(tmp_path, [*_chats(2), "{not json"])
    ws = Workspace(tmp_path / "work")
    with pytest.raises(UsageError, match="unknown target format"):
        data.plan_convert(str(source), "nope", None, ws)
    plan = data.plan_convert(str(source), "sharegpt", None, ws)
    out = tmp_path / "in.sharegpt.jsonl"
    assert plan.as_dict() == {"dry_run": True, "inputs": [str(source)], "target": "sharegpt", "output": str(out),
                              "force": False}  # fmt: skip
    assert not out.exists()  # decided, not written; the bad line is run's to count
    result = data.run_convert(plan)
    assert list(result.as_dict()) == ["output", "target", "written", "skipped", "invalid", "examples"]
    assert (result.written, result.invalid) == (2, 1) and out.read_text().count("\n") == 2
    with pytest.raises(UsageError, match="already exists"):
        data.plan_convert(str(source), "sharegpt", None, ws)
    assert data.plan_convert(str(source), "sharegpt", None, ws, force=True).force


def test_data_stats_and_preview_plans_read_no_record_and_load_no_tokenizer(tmp_path):
    from llmforge import data
    from llmforge.config.model import ModelConfig
    from llmforge.data.stage import PreviewResult
    from llmforge.errors import UsageError
    from llmforge.workspace import Workspace

    source = _data_inputs(tmp_path, [*_chats(3), "{not json"])
    ws = Workspace(tmp_path / "work")
    plan = data.plan_stats(str(source), ModelConfig(), ws)
    assert plan.as_dict() == {"dry_run": True, "inputs": [str(source)], "tokenizer": None,
                              "plot": str(ws.data_dir / "stats-lengths.png")}  # fmt: skip
    assert not ws.data_dir.exists()
    result = data.run_stats(plan)
    assert list(result.as_dict()) == ["files", "records", "invalid", "kinds", "roles", "turns", "length", "plot",
                                      "problems"]  # fmt: skip
    assert (result.records, result.invalid) == (4, 1) and result.plot == plan.plot
    with pytest.raises(UsageError, match="needs the model's tokenizer"):
        data.plan_preview(str(source), ModelConfig(), ws)
    # a tokenizer nowhere on this machine: planning does not look (run refuses it), so it loads nothing heavy
    code = (f"import sys; from pathlib import Path; from llmforge import data; "
            f"from llmforge.config.model import ModelConfig; from llmforge.workspace import Workspace; "
            f"p = data.plan_preview({str(source)!r}, ModelConfig(name={str(tmp_path / 'no-model')!r}), "
            f"Workspace(Path({str(tmp_path / 'work')!r})), n=2); "
            f"print(p.as_dict(), sorted(m for m in ('torch', 'transformers', 'tokenizers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == str({"dry_run": True, "inputs": [str(source)], "model": str(tmp_path / "no-model"),
                                      "count": 2}) + " []"  # fmt: skip
    assert list(_filled(PreviewResult).as_dict()) == ["model", "mask_source", "examples"]


def test_data_generate_plan_chunks_and_resumes_without_a_request_and_its_result_json_keeps_its_keys(tmp_path):
    from llmforge import data
    from llmforge.config.data import GenerateConfig
    from llmforge.data.stage import GenerateResult
    from llmforge.errors import UsageError
    from llmforge.workspace import Workspace

    doc = tmp_path / "doc.md"
    doc.write_text("# A\n\n" + "Lighthouses stand on rocks. " * 20 + "\n\n# B\n\n" + "Keepers trim wicks. " * 20)
    ws = Workspace(tmp_path / "work")
    cfg = GenerateConfig(endpoint="http://127.0.0.1:9/v1", model="m", chunk_chars=300, chunk_overlap=40)
    with pytest.raises(UsageError, match="no model named"):
        data.plan_generate([str(doc)], GenerateConfig(endpoint="http://127.0.0.1:9/v1"), ws)
    plan = data.plan_generate([str(doc)], cfg, ws)  # nothing listens on port 9: planning contacts nothing
    assert list(plan.as_dict()) == ["dry_run", "inputs", "output", "endpoint", "model", "chunks", "chunks_done",
                                    "requests", "force"]  # fmt: skip
    assert plan.inputs == [str(doc)] and plan.chunks >= 2 and plan.requests == plan.chunks and plan.chunks_done == 0
    assert not ws.generated_file.parent.exists()  # nothing written, not even the progress file
    # an earlier run's progress: the chunks it finished are skipped, unless `force` starts over
    chunk_id = plan.prepared.jobs[0][3]
    ws.generated_file.parent.mkdir(parents=True)
    state = ws.generated_file.with_name(f".{ws.generated_file.name}.progress.jsonl")
    state.write_text(json.dumps({"chunk_id": chunk_id, "source": str(doc), "chunk": 0, "pairs": []}) + "\n")
    resumed = data.plan_generate([str(doc)], cfg, ws)
    assert (resumed.chunks_done, resumed.requests) == (1, plan.chunks - 1)
    forced = data.plan_generate([str(doc)], cfg, ws, force=True)
    assert (forced.chunks_done, forced.requests) == (0, plan.chunks) and state.exists()  # run removes it, not plan
    state.unlink()
    ws.generated_file.write_text("")
    with pytest.raises(UsageError, match="already exists"):
        data.plan_generate([str(doc)], cfg, ws)
    assert list(_filled(GenerateResult).as_dict()) == [
        "output", "documents", "chunks", "chunks_skipped", "chunks_failed", "pairs", "dropped", "repaired_json",
        "requests", "retries", "errors",
    ]  # fmt: skip
