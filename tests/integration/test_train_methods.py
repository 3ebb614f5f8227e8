"""Every training method really trains tiny local models on CPU: the loss falls, the run folder is complete, the
end-of-turn token is trained, and a LoRA adapter learns a memorised answer."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_data import (  # noqa: E402
    ANSWER,
    QUESTION,
    chat_rows,
    memorise_rows,
    preference_rows,
    text_rows,
    workspace_with,
    write_jsonl,
)

from llmforge import checkpoints, registry  # noqa: E402
from llmforge.config import load_config  # noqa: E402
from llmforge.training import train  # noqa: E402
from llmforge.workspace import Workspace  # noqa: E402


def config(**dotted):
    return load_config(None, [], {k.replace("__", "."): v for k, v in dotted.items()}).config


METHOD_SETTINGS = {
    "scratch": dict(train__learning_rate=3e-3, train__max_length=64, train__scratch__hidden_size=32,
                    train__scratch__layers=2, train__scratch__heads=2, train__scratch__vocab_size=400),
    "sft": dict(train__learning_rate=3e-3),
    "lora": dict(train__learning_rate=1e-2),
    "qlora": dict(train__learning_rate=1e-2),
    "dpo": dict(train__learning_rate=1e-2, train__dpo__beta=0.5),
}


@pytest.mark.parametrize("method", ["scratch", "sft", "lora", "qlora", "dpo"])
def test_every_method_trains_and_its_loss_falls(method, tiny_llama_dir, tmp_path):
    rows = {"scratch": text_rows(), "dpo": preference_rows()}.get(method, chat_rows())
    ws = Workspace(workspace_with(tmp_path / "ws", rows))
    cfg = config(model__name=str(tiny_llama_dir), train__method=method, train__max_steps=30, train__logging_steps=5,
                 train__warmup_ratio=0.0, train__scheduler="constant", train__run_name=method,
                 **METHOD_SETTINGS[method])
    result = train(cfg.model, cfg.train, ws)
    assert result.steps == 30
    losses = [json.loads(line)["loss"] for line in ws.metrics_file(method).read_text().splitlines()]
    assert len(losses) == 6
    assert losses[-1] < losses[0] * (0.98 if method == "dpo" else 0.95), losses
    out = ws.adapter_dir(method) if method in ("lora", "qlora", "dpo") else ws.model_dir(method)
    assert Path(result.output) == out
    assert (out / "tokenizer.json").is_file() and (out / "chat_template.jinja").is_file()
    assert list(out.glob("*.safetensors")) and not list(out.glob("*.bin"))


def test_lora_run_folder_manifest_registry_and_cli(tiny_llama_dir, tmp_path):
    from typer.testing import CliRunner

    from llmforge.cli.app import app

    ws = Workspace(workspace_with(tmp_path / "ws", chat_rows(), chat_rows(4)))
    args = ["train", "--method", "lora", "--json", "-s", f"model.name={tiny_llama_dir}", "-s",
            f"project.workdir={ws.root}", "-s", "train.max_steps=12", "-s", "train.eval_every=6", "-s",
            "train.save_every=6", "-s", "train.logging_steps=3", "-s", "train.run_name=r1"]
    out = CliRunner().invoke(app, args)
    assert out.exit_code == 0, out.output
    result = json.loads(out.stdout)
    run = ws.run_dir("r1")
    assert result["run"] == "r1" and result["steps"] == 12
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "adapter/tokenizer.json",
                 "adapter/chat_template.jinja", "chat_template.jinja", "config.yaml", "fingerprint.json",
                 "metrics.jsonl", "loss.png", "manifest.json", "checkpoints/checkpoint-12"):
        assert (run / name).exists(), name
    assert (run / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (run / "chat_template.jinja").read_text() == (run / "adapter" / "chat_template.jinja").read_text()
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if "loss" in r]
    eval_rows = [r for r in rows if "eval_loss" in r]
    assert [r["step"] for r in train_rows] == [3, 6, 9, 12] and [r["step"] for r in eval_rows] == [6, 12]
    assert all(r["tokens_per_second"] > 0 and r["learning_rate"] is not None for r in train_rows)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["finished_at"] and manifest["method"] == "lora"
    assert manifest["base_model"] == str(Path(tiny_llama_dir).resolve())
    assert manifest["adapter"] == "adapter" and manifest["tokenizer"] == "adapter"
    assert manifest["chat_template"] == "chat_template.jinja" and manifest["end_of_turn"] == ["<|im_end|>"]
    assert manifest["tokens_seen"] > 0 and manifest["final_eval_loss"] == result["final_eval_loss"]
    assert manifest["inputs"]["train_data"]["sha256"] == manifest["data_sha256"]
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["run_name"] == "r1"
    entry = registry.find(ws.registry_file, "r1")
    assert entry["kind"] == "run" and entry["parent"] == f"data-{manifest['data_sha256'][:12]}"
    assert entry["path"] == str(run) and entry["metrics"]["steps"] == 12 and entry["status"] == "complete"
    assert ws.latest_run() == "r1"
    parts = checkpoints.read_run(run)
    assert parts["adapter"] == run / "adapter" and parts["base_model"] == manifest["base_model"]
    adapter_config = json.loads((run / "adapter" / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == manifest["base_model"]


def test_dry_run_prints_the_plan_and_trains_nothing(tiny_llama_dir, tmp_path):
    from typer.testing import CliRunner

    from llmforge.cli.app import app

    ws = Workspace(workspace_with(tmp_path / "ws", chat_rows(20)))
    out = CliRunner().invoke(app, ["train", "--method", "lora", "--dry-run", "-s", f"model.name={tiny_llama_dir}",
                                   "-s", f"project.workdir={ws.root}", "-s", "train.epochs=2"])
    assert out.exit_code == 0, out.output
    for words in ("parameters", "trainable", "tokens per epoch", "steps", "memory estimate", "backend", "trl"):
        assert words in out.output, words
    assert "10 (5 per epoch" in out.output  # 20 records, batch 4, 2 epochs
    assert not ws.runs_dir.exists()


def test_config_file_as_argument_and_typed_flags_for_what_every_run_sets(tiny_llama_dir, tmp_path):
    from typer.testing import CliRunner

    from llmforge.cli.app import app

    data = workspace_with(tmp_path / "elsewhere", chat_rows(20)) / "data"
    cfg = tmp_path / "my.yaml"
    cfg.write_text(f"project:\n  workdir: {tmp_path / 'ws'}\ntrain:\n  method: lora\n  max_steps: 50\n")
    out = CliRunner().invoke(app, ["train", str(cfg), "--model", str(tiny_llama_dir), "--data", str(data),
                                   "--max-steps", "7", "--name", "first", "--dry-run", "--json"])
    assert out.exit_code == 0, out.output
    plan = json.loads(out.output)
    assert plan["base_model"] == str(tiny_llama_dir) and plan["steps"] == 7 and plan["method"] == "lora"
    assert plan["run"] == "first" and plan["train_examples"] == 20  # the folder given by --data
    both = CliRunner().invoke(app, ["train", str(cfg), "-c", str(tmp_path / "other.yaml"), "--dry-run"])
    assert both.exit_code == 2 and "two config files" in both.output


def test_records_over_max_length_follow_the_stated_policy_and_are_counted(tiny_llama_dir, tmp_path):
    from typer.testing import CliRunner

    from llmforge.cli.app import app

    system = {"role": "system", "content": " ".join(["You answer arithmetic questions briefly and exactly."] * 6)}
    rows = chat_rows(20)
    for row in rows[:5]:  # a long system prompt: the answer lies past max_length
        row["messages"].insert(0, system)
    ws = workspace_with(tmp_path / "ws", rows)
    args = ["train", "--method", "lora", "--model", str(tiny_llama_dir), "-s", f"project.workdir={ws}",
            "-s", "train.max_length=48", "--max-steps", "2"]  # fmt: skip

    def plan(policy: str):
        out = CliRunner().invoke(app, [*args, "-s", f"train.overlong={policy}", "--dry-run", "--json"])
        return out.exit_code, (json.loads(out.output)["overlong"] if out.exit_code == 0 else out.output)

    code, truncated = plan("truncate")
    assert code == 0 and truncated["overlong"] == 5 and truncated["rows"] == 20
    assert truncated["dropped"] == 5 and truncated["truncated"] == 0  # no answer token within 48: dropped, counted
    code, dropped = plan("drop")
    assert code == 0 and dropped["dropped"] == 5
    code, failed = plan("fail")
    assert code == 2 and "5 of 20 training samples are longer than train.max_length (48" in failed
    assert "record 1 with" in failed and "train.overlong" in failed

    shown = CliRunner().invoke(app, [*args, "--dry-run"])
    assert "over max_length" in shown.output and "5 of 20 samples over 48 tokens" in shown.output
    ran = CliRunner().invoke(app, [*args, "--name", "r"])
    assert ran.exit_code == 0, ran.output
    manifest = json.loads((ws / "runs" / "r" / "manifest.json").read_text())
    assert manifest["overlong"]["overlong"] == 5 and manifest["overlong"]["policy"] == "truncate"


def test_end_of_turn_token_is_inside_the_loss_mask(tiny_llama_dir, tmp_path):
    from llmforge.training import data as data_mod
    from llmforge.training import stage, trainers

    ws = Workspace(workspace_with(tmp_path / "ws", chat_rows(4)))
    cfg = config(model__name=str(tiny_llama_dir), train__method="lora")
    tok = checkpoints.load_tokenizer(tiny_llama_dir)
    data = data_mod.load(None, ws, "lora")
    prec = stage._precision(cfg.train, cfg.model, "lora")
    built = trainers.build(cfg.model, cfg.train, "lora", "trl", data, tok, prec, 1e-3, output_dir=tmp_path / "c",
                           world=1)
    batch = built.trainer.data_collator([built.trainer.train_dataset[0]])
    ids, labels = batch["input_ids"][0].tolist(), batch["labels"][0].tolist()
    trained = [t for t, label in zip(ids, labels) if label != -100]
    assert tok.decode(trained) == "0 plus 0 is 0.<|im_end|>"
    assert trained[-1] == tok.eos_token_id  # the stop token is learned
    assert labels[: ids.index(tok.eos_token_id) + 1] == [-100] * (ids.index(tok.eos_token_id) + 1)  # user turn not


def test_template_with_end_of_turn_outside_the_trained_span_is_refused(tiny_llama_dir, tmp_path):
    import shutil

    from llmforge.errors import UsageError

    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    template = (model / "chat_template.jinja").read_text()
    broken = template.replace(
        "{% generation %}{{- message['content'] + '<|im_end|>' }}{% endgeneration %}",
        "{% generation %}{{- message['content'] }}{% endgeneration %}{{- '<|im_end|>' }}",
    )
    assert broken != template
    (model / "chat_template.jinja").write_text(broken)
    ws = Workspace(workspace_with(tmp_path / "ws", chat_rows(4)))
    cfg = config(model__name=str(model), train__method="lora", train__max_steps=2)
    with pytest.raises(UsageError, match="end-of-turn") as info:
        train(cfg.model, cfg.train, ws)
    assert "never learn to stop" in str(info.value) and not ws.runs_dir.exists()


def test_lora_learns_a_memorised_answer(tiny_llama_dir, tmp_path):
    import torch

    ws = Workspace(workspace_with(tmp_path / "ws", memorise_rows(8)))
    cfg = config(model__name=str(tiny_llama_dir), train__method="lora", train__max_steps=120,
                 train__learning_rate=1e-2, train__lora__rank=8, train__lora__dropout=0.0,
                 train__batch_size=8, train__run_name="mem", train__save_total_limit=1)
    result = train(cfg.model, cfg.train, ws)
    # A randomly initialised 64-wide model's lm_head bounds the logit margin a LoRA can reach (the final norm and
    # lm_head are frozen), so the loss stays high; greedy decoding only needs the right argmax at each position.
    assert result.final_loss < result.first_loss
    base = checkpoints.load_model(tiny_llama_dir)
    model = checkpoints.load_adapter(base, ws.adapter_dir("mem")).eval()
    tok = checkpoints.load_tokenizer(ws.adapter_dir("mem"))
    prompt = tok.apply_chat_template([{"role": "user", "content": QUESTION}], add_generation_prompt=True,
                                     tokenize=True, return_dict=True, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**prompt, max_new_tokens=30, do_sample=False)
    reply = out[0, prompt["input_ids"].shape[1]:].tolist()
    assert reply[-1] == tok.eos_token_id  # it stops by itself
    assert tok.decode(reply, skip_special_tokens=True) == ANSWER


def test_scratch_makes_a_complete_base_model_that_lora_fine_tunes(tmp_path):
    ws = Workspace(workspace_with(tmp_path / "ws", text_rows()))
    cfg = config(train__method="scratch", train__max_steps=5, train__max_length=64, train__run_name="base",
                 train__scratch__hidden_size=32, train__scratch__layers=1, train__scratch__heads=2,
                 train__scratch__vocab_size=400, train__scratch__architecture="qwen2")
    train(cfg.model, cfg.train, ws)
    base = ws.model_dir("base")
    for name in ("config.json", "model.safetensors", "generation_config.json", "tokenizer.json",
                 "chat_template.jinja"):
        assert (base / name).is_file(), name
    tok = checkpoints.load_tokenizer(base)
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>" and len(tok) == 400
    assert "{% generation %}" in tok.chat_template
    gen = json.loads((base / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.eos_token_id
    text = "The lighthouse keeper wrote 42 lines."
    assert tok.decode(tok(text)["input_ids"]) == text
    write_jsonl(ws.root / "chat" / "train.jsonl", chat_rows(8))
    cfg2 = config(model__name=str(base), train__method="lora", train__max_steps=3, train__run_name="ft",
                  train__data=str(ws.root / "chat"))
    result = train(cfg2.model, cfg2.train, ws)
    assert result.steps == 3 and (ws.adapter_dir("ft") / "adapter_model.safetensors").is_file()


def test_early_stopping_packing_and_grad_accumulation(tiny_llama_dir, tmp_path):
    ws = Workspace(workspace_with(tmp_path / "ws", chat_rows(), chat_rows(4)))
    # a threshold no eval can beat: training stops after `patience` evaluations without improvement
    cfg = config(model__name=str(tiny_llama_dir), train__method="lora", train__max_steps=40, train__eval_every=2,
                 train__early_stopping__patience=2, train__early_stopping__threshold=100.0, train__packing=True,
                 train__grad_accum=2, train__run_name="es")
    result = train(cfg.model, cfg.train, ws)
    assert result.steps == 6  # evals at 2 (first best), 4 and 6 (no improvement twice)
    rows = [json.loads(line) for line in ws.metrics_file("es").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval_loss" in r] == [2, 4, 6]


def test_cli_shows_progress_and_a_summary(tiny_llama_dir, tmp_path):
    from typer.testing import CliRunner

    from llmforge.cli.app import app

    ws = Workspace(workspace_with(tmp_path / "ws", chat_rows(8)))
    out = CliRunner().invoke(app, ["train", "--method", "sft", "-s", f"model.name={tiny_llama_dir}", "-s",
                                   f"project.workdir={ws.root}", "-s", "train.max_steps=4", "-s",
                                   "train.logging_steps=2", "-s", "train.run_name=p"])
    assert out.exit_code == 0, out.output
    assert "4/4" in out.output and "loss" in out.output  # the progress bar's last state
    assert "trained p: 4 steps, loss" in out.output and str(ws.model_dir("p")) in out.output.replace("\n", "")


def test_report_to_a_tracker_that_is_not_installed_is_refused(tmp_path):
    import importlib.util

    from llmforge.errors import UsageError

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    ws = Workspace(workspace_with(tmp_path / "ws", chat_rows(2)))
    cfg = config(model__name="x", train__method="lora", train__report_to="wandb")
    with pytest.raises(UsageError, match="train.report_to: wandb is not installed"):
        train(cfg.model, cfg.train, ws)


def read_tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars from TensorBoard event files, read record by record (length, crc, event proto, crc)."""
    import struct

    from tensorboardX.proto import event_pb2

    scalars: dict[str, list[tuple[int, float]]] = {}
    for path in sorted(folder.rglob("events.out.tfevents.*")):
        data = path.read_bytes()
        at = 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = event_pb2.Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def test_report_to_tensorboard_writes_the_losses_into_the_run_folder(tiny_llama_dir, tmp_path):
    pytest.importorskip("tensorboardX")
    ws = Workspace(workspace_with(tmp_path / "ws", chat_rows(8)))
    cfg = config(model__name=str(tiny_llama_dir), train__method="lora", train__max_steps=4, train__logging_steps=2,
                 train__report_to="tensorboard", train__run_name="tb")
    result = train(cfg.model, cfg.train, ws)
    scalars = read_tensorboard_scalars(ws.run_dir("tb") / "tensorboard")
    assert [step for step, _ in scalars["train/loss"]] == [2, 4]
    assert scalars["train/loss"][-1][1] == pytest.approx(result.final_loss, rel=1e-5)
    assert json.loads(ws.run_manifest("tb").read_text())["tensorboard"] == "tensorboard"
    assert not (ws.checkpoints_dir("tb") / "runs").exists()  # not transformers' default place


def test_unmarked_template_of_a_known_family_trains_with_the_family_marked_template(tiny_llama_dir, tmp_path):
    import shutil

    from llmforge.chat_templates import has_generation_markers

    model = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, model)
    template = (model / "chat_template.jinja").read_text()
    unmarked = template.replace("{% generation %}", "").replace("{% endgeneration %}", "")
    assert not has_generation_markers(unmarked)
    (model / "chat_template.jinja").write_text(unmarked)
    ws = Workspace(workspace_with(tmp_path / "ws", chat_rows(8)))
    cfg = config(model__name=str(model), train__method="lora", train__max_steps=2, train__run_name="fam")
    result = train(cfg.model, cfg.train, ws)
    manifest = json.loads(ws.run_manifest("fam").read_text())
    assert manifest["chat_template_source"] == "family" and manifest["chat_template_family"] == "chatml"
    # It trains with the family's marked copy but ships the model's own template (conventions: a fine-tuned model
    # keeps its template; the copy renders the same conversations but need not carry e.g. its tool-calling path).
    recorded = (ws.run_dir("fam") / "chat_template.jinja").read_text()
    assert recorded == unmarked == (Path(result.output) / "chat_template.jinja").read_text()


def test_full_dpo_against_an_explicit_reference_model(tiny_llama_dir, tmp_path):
    ws = Workspace(workspace_with(tmp_path / "ws", preference_rows()))
    cfg = config(model__name=str(tiny_llama_dir), train__method="dpo", train__dpo__lora=False,
                 train__dpo__reference_model=str(tiny_llama_dir), train__max_steps=6, train__learning_rate=1e-3,
                 train__logging_steps=1, train__run_name="full-dpo")
    result = train(cfg.model, cfg.train, ws)
    assert result.output == str(ws.model_dir("full-dpo"))  # every weight trained: a full model, no adapter
    assert result.final_loss < result.first_loss
    rows = [json.loads(line) for line in ws.metrics_file("full-dpo").read_text().splitlines()]
    assert any(key.startswith("rewards/") for key in rows[-1])  # DPO's own figures reach metrics.jsonl
