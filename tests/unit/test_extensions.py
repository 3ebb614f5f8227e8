"""Users' own functions loaded by import path: data.transforms in `data prepare` (in-process and in forked
workers), custom eval.metrics in the eval report, and errors that name the user's entry, record and exception."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from fakes.judge_server import FakeOpenAIServer
from pydantic import ValidationError

from llmforge.config.data import DataConfig
from llmforge.config.eval import EvalConfig
from llmforge.config.loader import load_config
from llmforge.config.model import ModelConfig
from llmforge.data import pipeline, prepare
from llmforge.errors import UsageError
from llmforge.evaluation import evaluate
from llmforge.extensions import load
from llmforge.workspace import Workspace

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "extensions"


@pytest.fixture
def example(monkeypatch):
    """The documented example module, importable as its README says (its folder on the path)."""
    monkeypatch.syspath_prepend(str(EXAMPLE))
    import support_extensions

    return support_extensions


def user_module(monkeypatch, tmp_path: Path, name: str, source: str) -> None:
    folder = tmp_path / "userpkgs"
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(textwrap.dedent(source))
    monkeypatch.syspath_prepend(str(folder))
    monkeypatch.delitem(__import__("sys").modules, name, raising=False)


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_load_finds_the_function_and_every_failure_names_the_entry(monkeypatch, tmp_path):
    user_module(monkeypatch, tmp_path, "ext_load", """
        VALUE = 3
        def double(record):
            return record
        class Holder:
            @staticmethod
            def inner(record):
                return None
    """)
    user_module(monkeypatch, tmp_path, "ext_broken_import", "raise RuntimeError('needs a licence key\\nsecond line')")
    assert load("ext_load:double", "data.transforms")({"text": "x"}) == {"text": "x"}
    assert load("ext_load:Holder.inner", "data.transforms")({"text": "x"}) is None
    cases = {
        "ext_load.double": "is not an import path like 'mypkg.module:function'",
        "no_such_module_xyz:f": "data.transforms: no_such_module_xyz:f: cannot import no_such_module_xyz "
        "(ModuleNotFoundError: No module named 'no_such_module_xyz')",
        "ext_load:triple": "data.transforms: ext_load:triple: ext_load has no triple",
        "ext_load:VALUE": "data.transforms: ext_load:VALUE: VALUE is a int, not a function",
        "ext_broken_import:f": "cannot import ext_broken_import (RuntimeError: needs a licence key)",
    }
    for entry, message in cases.items():
        with pytest.raises(UsageError) as caught:
            load(entry, "data.transforms")
        assert message in caught.value.message, entry
        assert caught.value.exit_code == 2 and "\n" not in caught.value.message


def test_config_checks_the_module_function_shape():
    assert DataConfig(transforms=["pkg.mod:fn", "m:Cls.method"]).transforms == ["pkg.mod:fn", "m:Cls.method"]
    for bad in ("pkg.mod.fn", "pkg.mod:", ":fn", "pkg mod:fn", "pkg.mod:fn()"):
        with pytest.raises(ValidationError, match="expected an import path like 'mypkg.module:function'"):
            DataConfig(transforms=[bad])
    assert EvalConfig(metrics=["f1", "pkg.mod:score"]).metrics == ["f1", "pkg.mod:score"]
    with pytest.raises(ValidationError, match="unknown metric.*mypkg.module:function"):
        EvalConfig(metrics=["f1", "pkg.mod.score"])


def test_the_example_config_names_the_example_functions(example):
    config = load_config(EXAMPLE / "llmforge.yaml", env={}).config
    assert config.data.transforms == ["support_extensions:redact_tickets"]
    for entry in config.data.transforms:
        load(entry, "data.transforms")
    custom = [m for m in config.eval.metrics if ":" in m]
    assert custom == ["support_extensions:mentions_ticket", "support_extensions:answer_length"]
    for entry in custom:
        load(entry, "eval.metrics")


def rows_with_tickets(n: int) -> list[dict]:
    rows = []
    for i in range(n):
        if i % 5 == 0:
            rows.append(chat(f"[draft] question {i}?", "not ready"))  # dropped by the transform
        elif i % 7 == 0:
            rows.append({"instruction": f"Where is TICKET-{i}?", "output": f"TICKET-{i} is number {i} of the queue."})
        else:
            rows.append(chat(f"Question {i} about TICKET-{100 + i}?", f"Answer {i}: see TICKET-{100 + i} for it."))
    return rows


def test_data_prepare_applies_transforms_in_process_and_in_workers_alike(example, monkeypatch):
    rows = rows_with_tickets(60)
    Path("in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    settings = {"inputs": ["in.jsonl"], "transforms": ["support_extensions:redact_tickets"],
                "dedupe": {"near": False}}  # fmt: skip
    one_ws, two_ws = Workspace(Path("one")), Workspace(Path("two"))
    one = prepare(DataConfig(workers=1, **settings), ModelConfig(), one_ws)
    monkeypatch.setattr(pipeline, "CHUNK_BYTES", 700)  # many chunks over two forked workers
    two = prepare(DataConfig(workers=2, **settings), ModelConfig(), two_ws)

    drafts = sum(1 for r in rows if "messages" in r and "[draft]" in r["messages"][0]["content"])
    assert drafts == 12
    assert one["counts"]["transformed_out"] == drafts
    assert one["counts"]["written"] == len(rows) - drafts and one["counts"]["read"] == len(rows)
    written = [r for s in ("train", "val", "test") for r in read(one_ws.split_file(s))]
    texts = [m["content"] for r in written for m in r["messages"]]
    assert texts and not any("TICKET-" in t or "[draft]" in t for t in texts)
    assert sum("<TICKET>" in t for t in texts) == 2 * len(written)
    assert "| transformed_out | 12 |" in one_ws.data_report_md.read_text()
    for split in ("train", "val", "test"):
        assert one_ws.split_file(split).read_bytes() == two_ws.split_file(split).read_bytes()
    assert two["counts"] == one["counts"]


def test_a_returned_record_is_validated_again(monkeypatch, tmp_path):
    user_module(monkeypatch, tmp_path, "ext_invalid", """
        def strip_answers(record):
            if "drop me" in record["messages"][0]["content"]:
                return {"messages": record["messages"][:1]}  # no assistant turn left: invalid
            return {"messages": [{**m, "content": "  " + m["content"] + "  "} for m in record["messages"]]}
    """)
    Path("in.jsonl").write_text(json.dumps(chat("keep me?", "Yes.")) + "\n" + json.dumps(chat("drop me?", "No.")) + "\n")
    report = prepare(DataConfig(inputs=["in.jsonl"], transforms=["ext_invalid:strip_answers"], on_error="skip"),
                     ModelConfig(), ws := Workspace(Path("w")))  # fmt: skip
    assert report["counts"]["rejected"] == 1 and report["counts"]["written"] == 1
    rejected = read(ws.rejected_file)
    assert rejected[0]["line"] == 2 and rejected[0]["reason"].startswith("after data.transforms: ")
    kept = [r for s in ("train", "val", "test") for r in read(ws.split_file(s))]
    assert kept == [chat("keep me?", "Yes.")]  # normalized again: the added whitespace is gone


@pytest.mark.parametrize("workers", [1, 2])
def test_a_transform_that_raises_names_entry_record_and_message(monkeypatch, tmp_path, workers):
    user_module(monkeypatch, tmp_path, "ext_raises", """
        def picky(record):
            if "bad" in record["messages"][0]["content"]:
                raise KeyError("no 'category' in this record")
            return record
    """)
    monkeypatch.setattr(pipeline, "CHUNK_BYTES", 300)
    rows = [chat(f"good question {i}?", f"good answer {i}") for i in range(7)] + [chat("bad question?", "bad answer")]
    Path("in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ws = Workspace(Path("w"))
    with pytest.raises(UsageError) as caught:
        prepare(DataConfig(inputs=["in.jsonl"], transforms=["ext_raises:picky"], workers=workers), ModelConfig(), ws)
    assert caught.value.message == (
        "data.transforms: ext_raises:picky failed on in.jsonl:8: KeyError: \"no 'category' in this record\""
    )
    assert caught.value.hint and not ws.split_file("train").exists()


def test_a_transform_that_cannot_be_imported_is_a_usage_error(tmp_path):
    Path("in.jsonl").write_text(json.dumps(chat("q?", "a.")) + "\n")
    with pytest.raises(UsageError, match="data.transforms: nope_mod_xyz:f: cannot import nope_mod_xyz"):
        prepare(DataConfig(inputs=["in.jsonl"], transforms=["nope_mod_xyz:f"]), ModelConfig(), Workspace(Path("w")))


QA = {
    "Which ticket is the kettle?": "TICKET-12 covers the kettle.",
    "How long is the cord?": "The cord is 75 centimetres long.",
    "Can I return it?": "Yes, within thirty days.",
}


@pytest.fixture
def eval_ws(tmp_path) -> Workspace:
    ws = Workspace(tmp_path / "ws")
    ws.data_dir.mkdir(parents=True)
    ws.split_file("test").write_text("".join(json.dumps(chat(q, a)) + "\n" for q, a in QA.items()))
    return ws


def test_custom_metrics_are_reported_beside_the_built_in_ones(example, eval_ws):
    answers = dict(QA, **{"Can I return it?": "Ask about TICKET-9 first."})
    metrics = ["exact_match", "support_extensions:mentions_ticket", "support_extensions:answer_length"]
    with FakeOpenAIServer(answers) as server:
        result = evaluate(ModelConfig(), EvalConfig(metrics=metrics, bootstrap=0), eval_ws, compare=[server.url])
    got = result.report["metrics"][server.url]
    assert got["exact_match"] == pytest.approx(2 / 3)
    assert got["mentions_ticket"] == pytest.approx(2 / 3)
    assert got["answer_words"] == pytest.approx((4 + 6 + 4) / 3)
    assert got["reference_words"] == pytest.approx((4 + 6 + 4) / 3)
    saved = json.loads((result.folder / "report.json").read_text())["metrics"][server.url]
    assert saved["mentions_ticket"] == pytest.approx(2 / 3)
    table = (result.folder / "report.md").read_text()
    header = next(line for line in table.splitlines() if line.startswith("| target |")).strip("| ").split(" | ")
    assert header[:2] == ["target", "exact_match"]
    assert header[-3:] == ["mentions_ticket", "answer_words", "reference_words"]
    assert "| 0.6667 | 4.667 | 4.667 |" in table


def test_a_custom_metric_that_fails_or_cannot_load_is_a_usage_error(monkeypatch, tmp_path, eval_ws):
    user_module(monkeypatch, tmp_path, "ext_metrics", """
        def crashes(predictions, references):
            return 1 / 0
        def wrong_type(predictions, references):
            return "high"
    """)
    with FakeOpenAIServer(QA) as server:
        for entry, message in (
            ("ext_metrics:crashes", "eval.metrics: ext_metrics:crashes failed: ZeroDivisionError: division by zero"),
            ("ext_metrics:wrong_type", "eval.metrics: ext_metrics:wrong_type returned str for 'wrong_type'"),
            ("ext_metrics:missing", "eval.metrics: ext_metrics:missing: ext_metrics has no missing"),
        ):
            with pytest.raises(UsageError) as caught:
                evaluate(ModelConfig(), EvalConfig(metrics=["f1", entry], bootstrap=0), eval_ws, compare=[server.url])
            assert caught.value.message.startswith(message), caught.value.message
    assert not (eval_ws.root / "eval").exists() or not any(p.name != "cache" for p in (eval_ws.root / "eval").iterdir())
