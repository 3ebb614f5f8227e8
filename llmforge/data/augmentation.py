"""`data augment`: paraphrased questions and out-of-scope refusals from an OpenAI-compatible endpoint.

Reads a prepared dataset folder (train/val/test.jsonl) and writes a new one beside it: val and test are copied
byte for byte, train gets the original records followed by the generated ones. Generated records carry a `meta`
field (what made them, and for a paraphrase the train line it rephrases); training ignores extra fields. Only
train grows: a paraphrase in val or test would grade the model on a question it was trained on. Generated
questions that repeat (exactly or nearly) a question of any split, or each other, are dropped and listed in
duplicates.jsonl. The endpoint, model, key, timeout and retries are those of `data generate`.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmforge import atomic, manifest
from llmforge.config.data import DedupeConfig
from llmforge.data import dedupe
from llmforge.data.clean import normalize_text
from llmforge.data.generation import Endpoint, json_payload, parse_pairs
from llmforge.errors import LlmforgeError, UsageError

if TYPE_CHECKING:
    from llmforge.data.stage import AugmentPlan, AugmentResult

SPLITS = ("train", "val", "test")

PARAPHRASE_SYSTEM = (
    "You rephrase questions. Each rephrasing must ask exactly the same thing, so that the same answer fits it, "
    "but use different words or sentence structure. Keep names, numbers and technical terms unchanged."
)
PARAPHRASE_PROMPT = (
    "Write {n} different rephrasings of the question below.\n"
    'Reply with JSON only, in this shape: {{"paraphrases": ["...", "..."]}}\n\n'
    "<question>\n{question}\n</question>"
)
REFUSAL_SYSTEM = (
    "You write test questions that an assistant should decline, with the assistant's answer, for training it "
    "to stay within its scope."
)
REFUSAL_PROMPT = (
    "The assistant only helps with: {scope}\n"
    "Write {n} varied questions that users might ask which are outside that scope, each with an answer that is "
    "{style}.\n"
    'Reply with JSON only, in this shape: {{"pairs": [{{"question": "...", "answer": "..."}}]}}'
)


def parse_strings(reply: str, key: str) -> list[str]:
    """The strings of a JSON reply: a list, or an object's `key` list; fences and trailing commas tolerated."""
    text = json_payload(reply)
    if text is None:
        return []
    data = None
    for candidate in (text, re.sub(r",\s*([}\]])", r"\1", text)):
        try:
            data = json.loads(candidate)
            break
        except json.JSONDecodeError:
            continue
    if isinstance(data, dict):
        data = data.get(key)
    if not isinstance(data, list):
        return []
    return [normalize_text(s) for s in data if isinstance(s, str) and s.strip()]


def _read_split(path: Path) -> list[tuple[int, str, dict[str, Any]]]:
    """(line number, raw line, record) of each record of a prepared split."""
    rows = []
    with open(path, encoding="utf-8") as fh:
        for number, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append((number, line.rstrip("\n"), json.loads(line)))
                except ValueError as exc:
                    raise UsageError(
                        f"{path}:{number}: not valid JSON ({exc})", hint="augment a folder `data prepare` wrote"
                    ) from None
    return rows


def _user_text(record: dict[str, Any]) -> str:
    return "\n".join(m["content"] for m in record.get("messages", []) if m.get("role") == "user")


def augment(plan: AugmentPlan, *, progress: Callable[[int, int], None] | None = None) -> AugmentResult:
    """The planned requests (paraphrases of each single-question train record, refusals in batches), the replies
    deduplicated against every split, and the new folder written (atomically) with a manifest."""
    from llmforge.data.stage import AugmentResult

    p = plan.prepared
    cfg, endpoint_cfg, splits, jobs = p.augment, p.generate, p.splits, p.jobs
    source, output, force, total = p.source, p.output, plan.force, plan.requests
    train = splits["train"]
    refusal_requests = math.ceil(cfg.refusals / cfg.batch) if cfg.refusals else 0
    failed, bad_json, errors = 0, 0, []
    endpoint = Endpoint(
        endpoint_cfg.endpoint, endpoint_cfg.model, endpoint_cfg.api_key, endpoint_cfg.timeout, endpoint_cfg.retries,
        endpoint_cfg.backoff,
    )  # fmt: skip
    model = endpoint_cfg.model
    done = 0

    def ask(system: str, prompt: str, what: str) -> str | None:
        nonlocal done
        try:
            return endpoint.chat(
                [{"role": "system", "content": system}, {"role": "user", "content": prompt}],
                cfg.temperature,
                cfg.max_tokens,
            )
        except ConnectionError as exc:
            nonlocal failed
            failed += 1
            errors.append(f"{what}: {exc}")
            return None
        finally:
            done += 1
            if progress:
                progress(done, total)

    candidates: list[tuple[str, dict[str, Any]]] = []  # (question, record) in the order they are written
    received = {"paraphrases": 0, "refusals": 0}
    if cfg.paraphrases:
        for line, record in jobs:
            turns = record["messages"]
            question = next(m["content"] for m in turns if m["role"] == "user")
            reply = ask(PARAPHRASE_SYSTEM, PARAPHRASE_PROMPT.format(n=cfg.paraphrases, question=question),
                        f"train.jsonl:{line}")  # fmt: skip
            if reply is None:
                continue
            found = parse_strings(reply, "paraphrases")[: cfg.paraphrases]
            bad_json += not found
            received["paraphrases"] += len(found)
            for text in found:
                messages = [dict(m, content=text) if m["role"] == "user" else dict(m) for m in turns]
                meta = {"generated": "paraphrase", "source_line": line, "model": model}
                candidates.append((text, {"messages": messages, "meta": meta}))
    if cfg.refusals:
        # a system prompt every train record shares belongs on the refusals too: they must look like the rest
        systems = {r["messages"][0]["content"] if r["messages"][0]["role"] == "system" else None for _, _, r in train}
        system = systems.pop() if len(systems) == 1 else None
        remaining = cfg.refusals
        for number in range(refusal_requests):
            n = min(cfg.batch, remaining)
            remaining -= n
            prompt = REFUSAL_PROMPT.format(scope=cfg.scope.strip(), n=n, style=cfg.refusal_style)
            reply = ask(REFUSAL_SYSTEM, prompt, f"refusals request {number + 1}")
            if reply is None:
                continue
            pairs = parse_pairs(reply)[0][:n]
            bad_json += not pairs
            received["refusals"] += len(pairs)
            for question, answer in pairs:
                messages = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
                if system is not None:
                    messages.insert(0, {"role": "system", "content": system})
                candidates.append((question, {"messages": messages, "meta": {"generated": "refusal", "model": model}}))
    if total and failed == total:
        raise LlmforgeError(
            f"every request failed: {errors[-1]}",
            hint="is the endpoint running? check data.generate.endpoint (an OpenAI-compatible /v1 base URL)",
        )
    if not candidates and bad_json:
        raise LlmforgeError(
            f"the model answered no usable JSON in {bad_json} replies",
            hint="use an instruction-following model (data.generate.model) or lower data.augment.temperature",
        )

    kept, duplicates = _dedupe(splits, candidates, p.dedupe)
    dropped = {"exact": 0, "near": 0}
    for entry in duplicates:
        dropped[entry["kind"]] += 1
    kept_counts = {"paraphrases": 0, "refusals": 0}
    for record in kept:
        kept_counts[record["meta"]["generated"] + "s"] += 1
    result = AugmentResult(
        output=str(output), source=str(source), requested=dict(plan.requested), received=received,
        kept=kept_counts, duplicates=dropped, requests=endpoint.requests, retries=endpoint.retried, failed=failed,
        bad_json=bad_json, skipped_records=plan.skipped_records, train=len(train) + len(kept), errors=errors,
    )  # fmt: skip

    timer = manifest.Timer()
    with atomic.atomic_dir(output, force=force) as tmp:
        with open(tmp / "train.jsonl", "w", encoding="utf-8") as fh:
            for _, raw, _ in train:
                fh.write(raw + "\n")
            for record in kept:
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
        for name in SPLITS[1:]:
            if name in splits:
                shutil.copyfile(source / f"{name}.jsonl", tmp / f"{name}.jsonl")
        with open(tmp / "duplicates.jsonl", "w", encoding="utf-8") as fh:
            for entry in duplicates:
                fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
        summary = {k: v for k, v in result.as_dict().items() if k not in ("output", "source")}
        inputs = {f"{name}.jsonl": source / f"{name}.jsonl" for name in splits}
        atomic.write_json(
            tmp / "manifest.json",
            manifest.build("data augment", inputs, timer, endpoint=endpoint.url, model=model, summary=summary),
        )
    return result


def _dedupe(
    splits: dict[str, list[tuple[int, str, dict[str, Any]]]],
    candidates: list[tuple[str, dict[str, Any]]],
    cfg: DedupeConfig,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Generated records whose question is new, and an entry for each one dropped. Questions are compared with
    the user text of every record of every split (and with the generated ones before them), exactly (always)
    and nearly (data.dedupe.near, at data.dedupe.threshold)."""
    originals = [(f"{name}.jsonl", line, _user_text(r)) for name, rows in splits.items() for line, _, r in rows]
    seen: dict[int, dict[str, Any]] = {}
    for file, line, text in originals:
        seen.setdefault(dedupe.exact_key(text), {"file": file, "line": line})
    survivors = []
    duplicates = []
    for index, (question, record) in enumerate(candidates):
        key = dedupe.exact_key(question)
        if key in seen:
            duplicates.append({"question": question, "kind": "exact", "duplicate_of": seen[key], **record["meta"]})
            continue
        seen[key] = {"generated": index}
        survivors.append((question, record))
    if not cfg.near or not survivors:
        return [r for _, r in survivors], duplicates

    where = [{"file": f, "line": n} for f, n, _ in originals]
    with tempfile.TemporaryDirectory(prefix="llmforge-augment-") as spill:
        near = dedupe.NearDuplicates(Path(spill) / "signatures.bin", cfg.threshold, cfg.num_perm, cfg.shingle)
        for _, _, text in originals:
            near.add(text)
        for question, _ in survivors:
            near.add(question)
        parent = near.clusters()
    kept = []
    for offset, (question, record) in enumerate(survivors):
        first = int(parent[len(originals) + offset])
        if first == len(originals) + offset:
            kept.append(record)
            continue
        of = where[first] if first < len(originals) else {"generated_question": survivors[first - len(originals)][0]}
        duplicates.append({"question": question, "kind": "near", "duplicate_of": of, **record["meta"]})
    return kept, duplicates
