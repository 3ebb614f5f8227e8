"""train.init_from: a new run starts from a finished run's adapter (lora) or weights (sft), records it as its parent,
and is refused when it could not start from that run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_data import chat_rows, workspace_with  # noqa: E402

from llmforge import checkpoints, registry  # noqa: E402
from llmforge.config import load_config  # noqa: E402
from llmforge.errors import UsageError  # noqa: E402
from llmforge.training import train  # noqa: E402
from llmforge.workspace import Workspace  # noqa: E402


def config(**dotted):
    return load_config(None, [], {k.replace("__", "."): v for k, v in dotted.items()}).config


def first_loss(ws: Workspace, run: str) -> float:
    rows = [json.loads(line) for line in ws.metrics_file(run).read_text().splitlines()]
    return next(r["loss"] for r in rows if r["step"] == 1)


def test_lora_run_continues_the_earlier_adapter_and_records_its_parent(tiny_llama_dir, tmp_path, monkeypatch):
    import torch
    from peft import get_peft_model_state_dict
    from safetensors.torch import load_file

    ws = Workspace(workspace_with(tmp_path / "ws", chat_rows()))
    common = dict(model__name=str(tiny_llama_dir), train__method="lora", train__learning_rate=1e-2,
                  train__warmup_ratio=0.0, train__scheduler="constant", train__logging_steps=1)
    cfg = config(**common, train__max_steps=15, train__run_name="first", train__lora__rank=8)
    train(cfg.model, cfg.train, ws)

    loaded = {}
    real_load_adapter = checkpoints.load_adapter

    def spy(base, adapter_dir, *, trainable=False):
        model = real_load_adapter(base, adapter_dir, trainable=trainable)
        loaded.update(dir=Path(adapter_dir), trainable=trainable,
                      weights={k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()})
        return model

    monkeypatch.setattr(checkpoints, "load_adapter", spy)
    # new data, and a train.lora.rank that does not apply: the adapter keeps its own shape
    (ws.data_dir / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat_rows(12)))
    cfg = config(**common, train__max_steps=2, train__run_name="second", train__init_from="first",
                 train__lora__rank=4)
    result = train(cfg.model, cfg.train, ws)
    monkeypatch.undo()
    cfg = config(**common, train__max_steps=1, train__run_name="fresh")
    train(cfg.model, cfg.train, ws)

    assert loaded["dir"] == ws.adapter_dir("first") and loaded["trainable"] is True
    saved = load_file(str(ws.adapter_dir("first") / "adapter_model.safetensors"))
    assert set(loaded["weights"]) == set(saved) and saved
    assert all(torch.equal(loaded["weights"][k], saved[k]) for k in saved)
    assert result.init_from == "first" and result.steps == 2
    assert first_loss(ws, "second") < first_loss(ws, "fresh")
    assert json.loads((ws.adapter_dir("second") / "adapter_config.json").read_text())["r"] == 8

    manifest = json.loads(ws.run_manifest("second").read_text())
    assert manifest["init_from"] == "first" and manifest["adapter"] == "adapter"
    assert json.loads(ws.run_manifest("fresh").read_text())["init_from"] is None
    entry = registry.find(ws.registry_file, "second")
    assert entry["parent"] == "first" and entry["dataset"] == f"data-{manifest['data_sha256'][:12]}"
    assert [e["id"] for e in registry.lineage(ws.registry_file, "second")] == ["first", "second"]

    from typer.testing import CliRunner

    from llmforge.cli.app import app

    out = CliRunner().invoke(app, ["runs", "show", "second", "-s", f"project.workdir={ws.root}"])
    assert out.exit_code == 0, out.output
    assert "run first -> run second" in out.output


def test_sft_run_continues_the_earlier_weights(tiny_llama_dir, tmp_path, monkeypatch):
    ws = Workspace(workspace_with(tmp_path / "ws", chat_rows()))
    common = dict(model__name=str(tiny_llama_dir), train__method="sft", train__learning_rate=3e-3,
                  train__warmup_ratio=0.0, train__scheduler="constant", train__logging_steps=1)
    cfg = config(**common, train__max_steps=12, train__run_name="a")
    train(cfg.model, cfg.train, ws)

    sources = []
    real_load_model = checkpoints.load_model

    def spy(name, **kwargs):
        sources.append(Path(name))
        return real_load_model(name, **kwargs)

    monkeypatch.setattr(checkpoints, "load_model", spy)
    cfg = config(**common, train__max_steps=1, train__run_name="b", train__init_from="a")
    train(cfg.model, cfg.train, ws)

    assert sources == [ws.model_dir("a")]
    assert first_loss(ws, "b") < first_loss(ws, "a")
    assert json.loads(ws.run_manifest("b").read_text())["init_from"] == "a"
    assert registry.find(ws.registry_file, "b")["parent"] == "a"


@pytest.mark.parametrize(
    ("method", "rows", "settings"),
    [
        ("scratch", "text", dict(train__learning_rate=3e-3, train__max_length=64, train__scratch__hidden_size=32,
                                 train__scratch__layers=2, train__scratch__heads=2, train__scratch__vocab_size=400)),
        ("qlora", "chat", dict(train__learning_rate=1e-2)),
    ],
)
def test_scratch_and_qlora_runs_continue(method, rows, settings, tiny_llama_dir, tmp_path):
    from train_data import text_rows

    ws = Workspace(workspace_with(tmp_path / "ws", text_rows() if rows == "text" else chat_rows()))
    common = dict(model__name=str(tiny_llama_dir), train__method=method, train__warmup_ratio=0.0,
                  train__scheduler="constant", train__logging_steps=1, **settings)
    cfg = config(**common, train__max_steps=12, train__run_name="one")
    train(cfg.model, cfg.train, ws)
    # a different scratch shape does not apply: the weights are the earlier run's
    if method == "scratch":
        common["train__scratch__hidden_size"] = 64
    cfg = config(**common, train__max_steps=1, train__run_name="two", train__init_from="one")
    result = train(cfg.model, cfg.train, ws)
    assert result.init_from == "one"
    assert first_loss(ws, "two") < first_loss(ws, "one")
    one, two = (json.loads(ws.run_manifest(r).read_text()) for r in ("one", "two"))
    assert two["init_from"] == "one" and two["parameters"] == one["parameters"]


def fake_run(ws: Workspace, name: str, **manifest) -> None:
    ws.run_dir(name).mkdir(parents=True)
    ws.run_manifest(name).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("method", "init_from", "run", "message"),
    [
        ("lora", "nope", None, "no finished run named 'nope'"),
        ("lora", "../x", None, "cannot be used as a name"),
        ("lora", "other-base", None, "was trained from /elsewhere/model, but model.name is"),
        ("lora", "full", None, "trained every weight (sft), so --method lora has no adapter"),
        ("sft", "adapter", None, "run adapter (lora) cannot be continued with --method sft"),
        ("lora", "adapter", "adapter", "cannot start from itself"),
    ],
)
def test_init_from_refusals(method, init_from, run, message, tiny_llama_dir, tmp_path):
    ws = Workspace(workspace_with(tmp_path / "ws", chat_rows(8)))
    base = str(Path(tiny_llama_dir).resolve())
    fake_run(ws, "other-base", method="lora", base_model="/elsewhere/model", adapter="adapter")
    fake_run(ws, "full", method="sft", base_model=base, model="model")
    fake_run(ws, "adapter", method="lora", base_model=base, adapter="adapter")
    cfg = config(model__name=str(tiny_llama_dir), train__method=method, train__max_steps=1,
                 train__init_from=init_from, train__run_name=run)
    with pytest.raises(UsageError) as err:
        train(cfg.model, cfg.train, ws, force=True)
    assert message in str(err.value) and err.value.hint
