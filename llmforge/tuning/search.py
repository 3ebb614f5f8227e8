"""The study: an Optuna TPE search stored in tune/<study>.db, each trial a `train` run, pruned on eval loss."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna

from llmforge import atomic
from llmforge.errors import ConfigError
from llmforge.tuning import space as space_mod


def run(model, train, tune, workspace, *, progress=None) -> dict[str, Any]:
    from llmforge.training import StopTraining
    from llmforge.training import train as train_verb

    space_mod.check(tune.space, train)
    if train.data is None and not workspace.split_file("val").is_file():
        raise ConfigError("tune.metric eval_loss needs a validation split (data/val.jsonl)",
                          hint="set data.split.val when running `llmforge data prepare`")
    emit = progress or (lambda event: None)
    folder = workspace.root / "tune"
    folder.mkdir(parents=True, exist_ok=True)
    database = folder / f"{tune.study}.db"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        study_name=tune.study, storage=f"sqlite:///{database}", load_if_exists=True, direction="minimize",
        # median of the earlier trials at the same step; two finished trials before any pruning, so a short study
        # still compares against something
        pruner=optuna.pruners.MedianPruner(n_startup_trials=2) if tune.prune else optuna.pruners.NopPruner(),
    )
    # The seed moves on with the study: a sampler reseeded as it was would replay the first run's random draws.
    study.sampler = optuna.samplers.TPESampler(seed=(tune.seed + len(study.get_trials(deepcopy=False))) % 2**32)
    # A trial still RUNNING in the file was cut off by an earlier process that died (one process runs a study).
    for stale in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        study.tell(stale.number, state=optuna.trial.TrialState.FAIL)

    while _counted(study) < tune.trials:
        trial = study.ask()
        params = {key: _suggest(trial, key, spec) for key, spec in tune.space.items()}
        run_name = f"tune-{tune.study}-{trial.number}"
        trial.set_user_attr("run", run_name)
        emit({"event": "trial", "number": trial.number, "run": run_name, "params": params})
        trial_train = space_mod.apply(train, {**params, "train.run_name": run_name})

        def report(event: dict, trial=trial) -> None:
            if event.get("event") == "eval" and event.get("eval_loss") is not None:
                trial.report(float(event["eval_loss"]), int(event["step"]))
                if trial.should_prune():
                    raise StopTraining(f"pruned at step {event['step']}")

        try:
            result = train_verb(model, trial_train, workspace, progress=report)
        except StopTraining:
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            emit({"event": "trial_done", "number": trial.number, "state": "PRUNED", "value": None})
            continue
        except BaseException:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        value = result.final_eval_loss
        if value is None:
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise ConfigError(f"trial {trial.number} ({run_name}) has no eval loss: the run had no validation split",
                              hint="give train.data a val split, or run `llmforge data prepare` with data.split.val")
        study.tell(trial, float(value))
        emit({"event": "trial_done", "number": trial.number, "state": "COMPLETE", "value": float(value)})

    rows = [_row(t) for t in study.get_trials(deepcopy=False)]
    done = [r for r in rows if r["state"] == "COMPLETE"]
    best = min(done, key=lambda r: r["eval_loss"]) if done else None
    out = folder / tune.study
    out.mkdir(parents=True, exist_ok=True)
    result = {"study": tune.study, "database": str(database), "metric": tune.metric, "trials": rows, "best": best}
    atomic.write_json(out / "results.json", result)
    plot = _plot(rows, out / "trials.png")
    return {**result, "results": str(out / "results.json"), "plot": str(plot) if plot else None}


def _counted(study) -> int:
    """Trials that count towards tune.trials: finished ones, whatever their outcome."""
    finished = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
    return len(study.get_trials(deepcopy=False, states=finished))


def _suggest(trial, key: str, spec: Any) -> Any:
    if isinstance(spec, list):
        return trial.suggest_categorical(key, spec)
    log = bool(spec.get("log", False))
    if space_mod.is_int_range(spec):
        return trial.suggest_int(key, spec["low"], spec["high"], step=spec.get("step", 1), log=log)
    return trial.suggest_float(key, float(spec["low"]), float(spec["high"]), step=spec.get("step"), log=log)


def _row(trial) -> dict[str, Any]:
    return {
        "trial": trial.number,
        "run": trial.user_attrs.get("run"),
        "params": dict(trial.params),
        "eval_loss": trial.value,
        "state": trial.state.name,
        "intermediate": {str(step): value for step, value in sorted(trial.intermediate_values.items())},
    }


def _plot(rows: list[dict], out_file: Path) -> Path | None:
    """trials.png: each finished trial's eval loss, and the best so far."""
    done = [(r["trial"], r["eval_loss"]) for r in rows if r["state"] == "COMPLETE"]
    if not done:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    best, running = [], float("inf")
    for _, value in done:
        running = min(running, value)
        best.append(running)
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.scatter(*zip(*done), label="eval loss")
    ax.step([n for n, _ in done], best, where="post", color="C1", label="best so far")
    pruned = [r["trial"] for r in rows if r["state"] == "PRUNED"]
    if pruned:
        ax.scatter(pruned, [min(v for _, v in done)] * len(pruned), marker="x", color="grey", label="pruned")
    ax.set_xlabel("trial")
    ax.set_ylabel("eval loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    with atomic.atomic_path(out_file) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return out_file


