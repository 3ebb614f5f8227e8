"""`llmforge tune`: trials are real train runs recorded in tune/<study>.db, a rerun continues the study, --apply
writes the best values into the YAML file, and a space key that is not a train.* key is a config error."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from train_data import chat_rows, workspace_with  # noqa: E402

from llmforge.cli.app import app  # noqa: E402


def config_file(tmp_path: Path, model_dir: Path, space: dict) -> Path:
    ws = workspace_with(tmp_path / "ws", chat_rows(8), chat_rows(4))
    cfg = {
        "project": {"workdir": str(ws)},
        "model": {"name": str(model_dir)},
        # eval_every 1 feeds the pruner an eval loss at every step
        "train": {"method": "lora", "max_steps": 2, "eval_every": 1, "save_every": 100, "seed": 3,
                  "lora": {"rank": 8, "dropout": 0.0}},
        "tune": {"study": "s1", "trials": 2, "space": space},
    }
    path = tmp_path / "my.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


SPACE = {"train.learning_rate": {"low": 1e-4, "high": 1e-2, "log": True}, "train.lora.rank": [2, 4]}


def test_trials_run_resume_and_apply(tiny_llama_dir, tmp_path):
    path = config_file(tmp_path, tiny_llama_dir, SPACE)
    ws = tmp_path / "ws"
    runner = CliRunner()

    first = runner.invoke(app, ["tune", str(path), "--json"])
    assert first.exit_code == 0, first.output
    result = json.loads(first.output)
    assert [t["trial"] for t in result["trials"]] == [0, 1]
    for trial in result["trials"]:
        assert trial["state"] in ("COMPLETE", "PRUNED")
        assert (ws / "runs" / f"tune-s1-{trial['trial']}").is_dir()
        assert trial["intermediate"], "eval losses were reported to the pruner"
    assert result["trials"][0]["state"] == "COMPLETE" and result["trials"][0]["eval_loss"] > 0
    assert (ws / "tune" / "s1.db").is_file()
    saved = json.loads((ws / "tune" / "s1" / "results.json").read_text())
    assert len(saved["trials"]) == 2
    assert (ws / "tune" / "s1" / "trials.png").stat().st_size > 0

    # the rerun continues the same study: one more trial (number 2), the first two kept, not rerun
    second = runner.invoke(app, ["tune", str(path), "--trials", "3", "--apply"])
    assert second.exit_code == 0, second.output
    assert "trial 2 (tune-s1-2)" in second.output and "trial 0 (" not in second.output
    saved = json.loads((ws / "tune" / "s1" / "results.json").read_text())
    assert [t["trial"] for t in saved["trials"]] == [0, 1, 2]
    assert saved["trials"][0]["params"] == result["trials"][0]["params"]
    # the resumed sampler does not replay the first run's random draws
    assert saved["trials"][2]["params"] != saved["trials"][0]["params"]

    best = saved["best"]["params"]
    written = yaml.safe_load(path.read_text())
    assert written["train"]["learning_rate"] == best["train.learning_rate"]
    assert written["train"]["lora"]["rank"] == best["train.lora.rank"]
    # other keys kept
    assert written["train"]["lora"]["dropout"] == 0.0 and written["tune"]["space"] == SPACE
    assert written["train"]["max_steps"] == 2


def test_bad_space_key_is_a_config_error(tiny_llama_dir, tmp_path):
    path = config_file(tmp_path, tiny_llama_dir, {"train.lora.rnak": [4, 8]})
    result = CliRunner().invoke(app, ["tune", str(path)])
    assert result.exit_code == 2, result.output
    assert "tune.space.train.lora.rnak" in result.output and "train.lora.rank" in result.output
    assert not (tmp_path / "ws" / "tune").exists()


def test_apply_refused_without_a_config_file(tiny_llama_dir, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["tune", "--apply", "-s", f"model.name={tiny_llama_dir}",
                                      "-s", "tune.space={train.lora.rank: [4, 8]}"])
    assert result.exit_code == 2, result.output
    assert "--apply needs a config file" in result.output


def test_a_trial_trailing_the_median_eval_loss_is_pruned(tiny_llama_dir, tmp_path):
    import optuna

    space = {"train.lora.rank": [2, 4]}
    path = config_file(tmp_path, tiny_llama_dir, space)
    ws = tmp_path / "ws"
    # two finished trials in the study file whose eval loss was 0 at every step: any real loss trails their median
    (ws / "tune").mkdir(parents=True)
    study = optuna.create_study(study_name="s1", storage=f"sqlite:///{ws / 'tune' / 's1.db'}")
    for _ in range(2):
        study.add_trial(optuna.trial.create_trial(
            params={"train.lora.rank": 2}, distributions={"train.lora.rank": optuna.distributions.
                                                          CategoricalDistribution([2, 4])},
            value=0.0, intermediate_values={1: 0.0, 2: 0.0},
        ))
    result = CliRunner().invoke(app, ["tune", str(path), "--trials", "3", "--json"])
    assert result.exit_code == 0, result.output
    trials = json.loads(result.output)["trials"]
    assert trials[2]["state"] == "PRUNED", trials[2]
    assert list(trials[2]["intermediate"]) == ["1"]  # stopped at its first evaluation, not trained to the end
    assert trials[2]["intermediate"]["1"] > 0
