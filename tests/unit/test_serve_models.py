"""Several models in one server and A/B variants, without a model: the lazy pool with its limits, the variant
choice's stickiness and weights, resolving the lineup, and `serve report` from logs. No torch here."""

from __future__ import annotations

import json
import random
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from llmforge.cli.app import app
from llmforge.config import load_config
from llmforge.errors import ConfigError, UsageError
from llmforge.serving.models import Models
from llmforge.serving.report import build
from llmforge.serving.target import Target, Variant, resolve_lineup
from llmforge.serving.variants import pick
from llmforge.workspace import Workspace


class FakeEngine:
    parallel = 1

    def __init__(self, name: str):
        self.name = name
        self.closed = False

    def close(self):
        self.closed = True


def gguf(folder: Path, name: str, size: int = 1000) -> Path:
    path = folder / f"{name}.gguf"
    path.write_bytes(b"\0" * size)
    return path


def pool(tmp_path, sizes: dict[str, int], load_seconds: float = 0.0, **limits):
    loaded: list[str] = []

    def load(target):
        loaded.append(target.name)
        time.sleep(load_seconds)
        return FakeEngine(target.name)

    targets = [Target("llamacpp", gguf(tmp_path, name, size), name) for name, size in sizes.items()]
    models = Models(targets, load, max_queue=4, **limits)
    models.start()
    return models, loaded


def test_models_load_on_first_use_and_only_once_however_many_ask(tmp_path):
    models, loaded = pool(tmp_path, {"a": 10, "b": 10}, load_seconds=0.2)
    assert models.loaded() == [] and loaded == []
    got = []
    threads = [threading.Thread(target=lambda: got.append(models.acquire("a"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert loaded == ["a"] and len(got) == 8 and len({id(s.engine) for s in got}) == 1
    assert models.held_now("b") is None  # not loaded: the caller must wait in a thread
    for slot in got:
        models.release(slot)
    models.stop()


def test_the_least_recently_used_idle_model_makes_room(tmp_path):
    models, loaded = pool(tmp_path, {"a": 10, "b": 10, "c": 10}, max_loaded=2)
    for name in ("a", "b", "a"):  # b is now the least recently used
        models.release(models.acquire(name))
    engine_b = models.slots["b"].engine
    models.release(models.acquire("c"))
    assert sorted(models.loaded()) == ["a", "c"] and engine_b.closed
    assert models.unloads == {"a": 0, "b": 1, "c": 0} and loaded == ["a", "b", "c"]
    models.stop()


def test_memory_limit_counts_weights_and_a_busy_model_is_waited_for(tmp_path):
    models, loaded = pool(tmp_path, {"big": 600, "small": 300, "other": 300}, memory_limit=1000)
    big = models.acquire("big")  # held: a request is being answered by it
    models.release(models.acquire("small"))
    assert sorted(models.loaded()) == ["big", "small"]
    models.release(models.acquire("other"))  # 600 + 300 + 300 > 1000: the idle one goes, the busy one stays
    assert sorted(models.loaded()) == ["big", "other"]
    models.acquire("other")  # both held now: "small" must wait until one is released
    done = threading.Event()
    threading.Thread(target=lambda: (models.acquire("small"), done.set()), daemon=True).start()
    assert not done.wait(0.3)
    models.release(big)
    assert done.wait(5) and sorted(models.loaded()) == ["other", "small"]
    models.stop()


def test_a_failed_load_is_reported_and_can_be_retried(tmp_path):
    from llmforge.serving.models import ModelLoadFailed

    calls = []

    def load(target):
        calls.append(target.name)
        if len(calls) == 1:
            raise RuntimeError("out of memory")
        return FakeEngine(target.name)

    models = Models([Target("llamacpp", gguf(tmp_path, "a"), "a")], load, max_queue=4)
    with pytest.raises(ModelLoadFailed, match="a: out of memory"):
        models.acquire("a")
    models.release(models.acquire("a"))
    assert calls == ["a", "a"] and models.loaded() == ["a"]
    models.stop()


VARIANTS = [Variant("control", "m1", 3.0), Variant("treatment", "m2", 1.0), Variant("off", "m3", 0.0)]


def test_a_variant_is_sticky_per_id_and_the_weights_hold_over_many_ids():
    rng = random.Random(1234)
    ids = [f"user-{rng.getrandbits(64):x}" for _ in range(4000)]
    first = {i: pick(VARIANTS, "ab", i).name for i in ids}
    assert all(pick(VARIANTS, "ab", i).name == first[i] for i in ids[:500])  # the same id, the same variant
    share = sum(v == "control" for v in first.values()) / len(ids)
    # 3:1 is 0.75; the standard error over 4000 ids is 0.007, so 0.03 is over 4 of them
    assert abs(share - 0.75) < 0.03, share
    assert "off" not in first.values()
    # another group splits the same ids independently
    other = {i: pick(VARIANTS, "other", i).name for i in ids}
    assert sum(first[i] != other[i] for i in ids) > 1000


def test_without_an_id_the_choice_follows_the_weights():
    random.seed(7)
    share = sum(pick(VARIANTS, "ab", None).name == "treatment" for _ in range(4000)) / 4000
    assert abs(share - 0.25) < 0.03, share


def test_lineup_resolves_every_entry_and_names_the_bad_one(tmp_path):
    a, b = gguf(tmp_path, "a"), gguf(tmp_path, "b")
    workspace = Workspace(tmp_path / "ws")

    def lineup(*sets):
        cfg = load_config(None, list(sets), {}).config
        return resolve_lineup(cfg.model.name, cfg.serve, workspace)

    targets, variants = lineup(f"serve.models=[{a},{b}]")
    assert [t.name for t in targets] == ["a", "b"] and variants == []
    targets, variants = lineup(f"serve.models=[{a}]",
                               f'serve.variants=[{{name: x, model: a, weight: 2}}, {{name: y, model: "{b}"}}]')  # fmt: skip
    assert [t.name for t in targets] == ["a", "b"]
    assert variants == [Variant("x", "a", 2.0), Variant("y", "b", 1.0)]
    with pytest.raises(UsageError, match=r"serve.models\[1\]: 'nope' is not a file") as err:
        lineup(f"serve.models=[{a},nope]")
    assert err.value.exit_code == 2
    (tmp_path / "other").mkdir()
    with pytest.raises(UsageError, match=r"serve.models\[1\]: .* the same name as serve.models\[0\]"):
        lineup(f"serve.models=[{a},{gguf(tmp_path / 'other', 'a')}]")
    with pytest.raises(UsageError, match=r"serve.variants\[0\].model: 'missing'"):
        lineup("serve.variants=[{name: x, model: missing}]")


def test_variant_config_is_checked():
    with pytest.raises(ConfigError, match="used twice"):
        load_config(None, ["serve.variants=[{name: x, model: a}, {name: x, model: b}]"], {})
    with pytest.raises(ConfigError, match="every weight is 0"):
        load_config(None, ["serve.variants=[{name: x, model: a, weight: 0}]"], {})
    with pytest.raises(ConfigError, match="serve.variants"):
        load_config(None, ["serve.variants=[{name: 'a b', model: a}]"], {})  # it goes into headers and labels


def test_a_model_larger_than_the_memory_limit_stops_serve_before_it_starts(tmp_path):
    big = gguf(tmp_path, "big", 3_000_000)
    result = CliRunner().invoke(app, ["serve", "-m", str(gguf(tmp_path, "s")), "-m", str(big), "--dry-run",
                                      "-s", "serve.memory_limit_mb=2"])  # fmt: skip
    assert result.exit_code == 2 and "big" in result.stderr and "serve.memory_limit_mb" in result.stderr
    result = CliRunner().invoke(app, ["serve", "-m", str(gguf(tmp_path, "s")), "-m", str(big), "--dry-run", "--json"])
    assert result.exit_code == 0, result.output
    assert [m["model"] for m in json.loads(result.stdout)["models"]] == ["s", "big"]


def log_line(variant: str, latency: float, completion: int, finish: str = "stop", **extra) -> str:
    meta = {"model": f"m-{variant}", "variant_group": "ab", "variant": variant, "latency_s": latency,
            "finish_reason": finish, "usage": {"prompt_tokens": 5, "completion_tokens": completion}, **extra}  # fmt: skip
    return json.dumps({"messages": [], "metadata": meta})


def test_report_compares_the_variants_of_the_logs(tmp_path):
    folder = tmp_path / "serve" / "conversations"
    folder.mkdir(parents=True)
    lines = [log_line("a", 1.0, 10, feedback="up"), log_line("a", 3.0, 20, "length", feedback="down"),
             log_line("b", 0.5, 4, feedback=1), "not json",
             json.dumps({"messages": [], "metadata": {"model": "plain"}})]  # fmt: skip
    (folder / "conversations-20260101-000000-000000.jsonl").write_text("\n".join(lines[:2]) + "\n")
    (folder / "conversations.jsonl").write_text("\n".join(lines[2:]) + "\n")
    report = build(folder)
    assert report["unreadable_lines"] == 1 and report["without_variant"] == 1
    group = report["groups"]["ab"]
    a, b = group["variants"]["a"], group["variants"]["b"]
    assert (group["requests"], group["reference"]) == (3, "a")
    assert a["requests"] == 2 and a["share"] == pytest.approx(2 / 3) and a["completion_tokens"] == 30
    assert a["latency_s"] == {"mean": 2.0, "p50": 1.0, "p95": 3.0}
    assert a["finish_reasons"] == {"length": 1, "stop": 1} and a["length_rate"] == 0.5
    assert a["feedback"] == {"count": 2, "mean": 0.5} and b["feedback"] == {"count": 1, "mean": 1.0}
    assert group["deltas"]["b"]["mean_latency_s"] == pytest.approx(-1.5)
    assert group["deltas"]["b"]["mean_completion_tokens"] == pytest.approx(-11.0)

    runner = CliRunner()
    result = runner.invoke(app, ["serve", "report", "--json", "-s", f"project.workdir={tmp_path}"])
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    out = Path(body["output_dir"])
    assert json.loads((out / "report.json").read_text())["groups"]["ab"]["variants"]["b"]["requests"] == 1
    assert "| b | m-b | 1 | 33.3% |" in (out / "report.md").read_text()


def test_report_without_variant_logs_is_a_usage_error(tmp_path):
    result = CliRunner().invoke(app, ["serve", "report", "-s", f"project.workdir={tmp_path}"])
    assert result.exit_code == 2 and "no conversation logs" in result.stderr and "hint:" in result.stderr


def test_report_joins_the_feedback_log_to_the_answers_by_id(tmp_path):
    folder = tmp_path / "serve" / "conversations"
    folder.mkdir(parents=True)
    lines = [log_line("a", 1.0, 10, id="chatcmpl-a1"), log_line("b", 1.0, 10, id="chatcmpl-b1"),
             log_line("b", 1.0, 10, id="chatcmpl-b2"),
             json.dumps({"messages": [], "metadata": {"model": "plain", "id": "chatcmpl-c1"}})]  # fmt: skip
    (folder / "conversations.jsonl").write_text("\n".join(lines) + "\n")
    feedback = tmp_path / "serve" / "feedback"
    feedback.mkdir()
    thumbs = [("chatcmpl-b1", "down"), ("chatcmpl-a1", "up"), ("chatcmpl-c1", "up"), ("chatcmpl-zz", "down")]
    (feedback / "feedback-20260101-000000-000000.jsonl").write_text(
        "".join(json.dumps({"id": i, "feedback": t}) + "\n" for i, t in thumbs)
    )
    later = [json.dumps({"id": "chatcmpl-b1", "feedback": "up"}), json.dumps({"id": "chatcmpl-b2", "feedback": "down"}),
             "not json", json.dumps(["chatcmpl-a1"])]  # fmt: skip
    (feedback / "feedback.jsonl").write_text("\n".join(later) + "\n")
    report = build(folder)
    variants = report["groups"]["ab"]["variants"]
    assert variants["a"]["feedback"] == {"count": 1, "mean": 1.0}
    assert variants["b"]["feedback"] == {"count": 2, "mean": 0.5}  # b1's later thumb up replaced its thumb down
    assert report["groups"]["ab"]["deltas"]["b"]["feedback_mean"] == -0.5
    assert report["feedback_without_variant"] == 2 and report["unreadable_lines"] == 2
    assert len(report["feedback_logs"]) == 2

    result = CliRunner().invoke(app, ["serve", "report", "--json", "-s", f"project.workdir={tmp_path}"])
    assert result.exit_code == 0, result.output
    markdown = (Path(json.loads(result.stdout)["output_dir"]) / "report.md").read_text()
    assert "| 2, 0.5 |" in markdown and "2 feedback(s) without a variant" in markdown


def test_the_conversation_log_finds_answers_by_id_after_a_restart(tmp_path):
    from llmforge.serving.conversations import ConversationLog

    log = ConversationLog(tmp_path, 10_000)
    log.record([], "one", {"id": "chatcmpl-1", "model": "m"})
    assert log.answer("chatcmpl-1") == (True, None) and log.answer("chatcmpl-2") == (False, None)
    log.record([], "two", {"id": "chatcmpl-2", "model": "m2", "variant_group": "ab", "variant": "b"})
    assert log.answer("chatcmpl-2") == (True, ("ab", "b", "m2"))  # logged after the first lookup read the files
    again = ConversationLog(tmp_path, 10_000)  # a restarted server reads the ids back from the files
    assert again.answer("chatcmpl-2") == (True, ("ab", "b", "m2")) and again.answer("chatcmpl-1") == (True, None)


def test_the_conversation_log_remembers_the_newest_answers_only(tmp_path, monkeypatch):
    from llmforge.serving import conversations

    monkeypatch.setattr(conversations, "MAX_REMEMBERED", 2)
    log = conversations.ConversationLog(tmp_path, 10_000)
    for i in range(3):
        log.record([], "a", {"id": f"chatcmpl-{i}"})
    assert [log.answer(f"chatcmpl-{i}")[0] for i in range(3)] == [False, True, True]


def test_report_reads_answers_holding_unicode_line_separators(tmp_path):
    # A model's answer may hold U+2028, U+2029 or U+0085: json.dumps(ensure_ascii=False) leaves them as they are, and
    # str.splitlines() would cut the record in two (seen as a flaky count with a tiny random model's answers).
    from llmforge.serving.conversations import ConversationLog

    folder = tmp_path / "serve" / "conversations"
    log = ConversationLog(folder, 1_000_000)
    for i, answer in enumerate(["one\u2028two", "three\x85four", "five\u2029six"]):
        log.record([{"role": "user", "content": "hi"}], answer,
                   {"id": f"chatcmpl-{i}", "model": "m", "variant_group": "ab", "variant": "a", "latency_s": 1.0,
                    "finish_reason": "stop", "usage": {"prompt_tokens": 1, "completion_tokens": 2}})  # fmt: skip
    feedback = ConversationLog(tmp_path / "serve" / "feedback", 1_000_000, "feedback")
    for i in range(3):
        feedback.append({"id": f"chatcmpl-{i}", "feedback": "up"})
    report = build(folder)
    assert report["unreadable_lines"] == 0
    assert report["groups"]["ab"]["variants"]["a"]["feedback"] == {"count": 3, "mean": 1.0}
