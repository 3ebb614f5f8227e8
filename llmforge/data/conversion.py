"""`data convert`: write a dataset in another tool's format (chatml, alpaca, sharegpt, openai, text)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import orjson

from llmforge import atomic
from llmforge.data import records as rec
from llmforge.data.inspect import iter_records
from llmforge.errors import UsageError

if TYPE_CHECKING:
    from llmforge.data.stage import ConvertPlan, ConvertResult

TARGETS = ("chatml", "alpaca", "sharegpt", "openai", "text")
SHAREGPT_FROM = {"system": "system", "user": "human", "assistant": "gpt"}


class Unrepresentable(Exception):
    """The record has no faithful form in the target format (e.g. a multi-turn chat as alpaca)."""


def chatml(messages: list[dict[str, str]]) -> str:
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)


def to_format(kind: str, record: dict[str, Any], target: str) -> dict[str, Any]:
    if target == "openai":
        return record  # the canonical schema is OpenAI's
    if kind == "text":
        if target == "text":
            return record
        raise Unrepresentable("raw text has no turns")
    if kind == "preference":
        if target == "chatml":
            return {"prompt": chatml(record["prompt"]) + "<|im_start|>assistant\n",
                    "chosen": "".join(m["content"] for m in record["chosen"]) + "<|im_end|>",
                    "rejected": "".join(m["content"] for m in record["rejected"]) + "<|im_end|>"}  # fmt: skip
        raise Unrepresentable(f"preference pairs have no {target} form")
    if kind == "kto":
        raise Unrepresentable(f"labelled completions (KTO) have no {target} form")
    messages = record["messages"]
    if target == "chatml":
        return {"text": chatml(messages)}
    if target == "text":
        return {"text": rec.plain(record)}
    if target == "sharegpt":
        return {"conversations": [{"from": SHAREGPT_FROM[m["role"]], "value": m["content"]} for m in messages]}
    if target == "alpaca":
        system = [m["content"] for m in messages if m["role"] == "system"]
        turns = [m for m in messages if m["role"] != "system"]
        if len(turns) != 2:
            raise Unrepresentable("alpaca holds one instruction and one output (this is a multi-turn chat)")
        out = {"instruction": turns[0]["content"], "input": "", "output": turns[1]["content"]}
        if system:
            out["system"] = system[0]
        return out
    raise UsageError(f"unknown target format {target!r}", hint=f"choose one of {', '.join(TARGETS)}")


def convert(plan: ConvertPlan) -> ConvertResult:
    """stage.run_convert: every planned record in the target format, written atomically."""
    from llmforge.data.stage import ConvertResult

    target, output = plan.target, plan.prepared.output
    written = skipped = invalid = 0
    examples: list[str] = []
    with atomic.atomic_path(output) as tmp, open(tmp, "wb") as fh:
        for file, line, kind, record, problem in iter_records(plan.prepared.files):
            if problem:
                invalid += 1
                if len(examples) < 10:
                    examples.append(f"{file}:{line}: {problem}")
                continue
            try:
                fh.write(orjson.dumps(to_format(kind, record, target)) + b"\n")
                written += 1
            except Unrepresentable as exc:
                skipped += 1
                if len(examples) < 10:
                    examples.append(f"{file}:{line}: not representable as {target}: {exc}")
    return ConvertResult(str(output), target, written, skipped, invalid, examples)
