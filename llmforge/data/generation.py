"""`data generate`: question/answer pairs from documents through any OpenAI-compatible endpoint.

Documents are chunked on headings and paragraphs with overlap; each chunk is asked for N pairs as JSON; broken
JSON is repaired or dropped; answers with little lexical grounding in their chunk are dropped; questions are
deduplicated. Finished chunks are appended to a progress file beside the output, so a rerun skips them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llmforge import atomic
from llmforge.config.data import GenerateConfig
from llmforge.data import sources
from llmforge.data.clean import normalize_text
from llmforge.errors import LlmforgeError, UsageError
from llmforge.workspace import Workspace

if TYPE_CHECKING:
    from pydantic import SecretStr

    from llmforge.data.stage import GeneratePlan, GenerateResult

log = logging.getLogger(__name__)

SYSTEM_PROMPT = (
    "You write question and answer pairs for training an assistant. Use only facts stated in the document; "
    "answers must be correct, self-contained and phrased with the document's own words where possible."
)
USER_PROMPT = (
    "Write {n} question and answer pairs about the document below.\n"
    'Reply with JSON only, in this shape: {{"pairs": [{{"question": "...", "answer": "..."}}]}}\n\n'
    "<document>\n{chunk}\n</document>"
)

_HEADING = re.compile(r"^(#{1,6}\s|\S.*\n(?:=+|-+)\s*$)", re.MULTILINE)
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
STOPWORDS = frozenset(
    "the a an and or but of to in on at for with by from as is are was were be been being this that these those it "
    "its into than then there their they them he she his her you your we our i me my not no yes do does did can "
    "could should would will shall may might must have has had which who whom what when where why how also so such "
    "any all each both either about over under more most other some only own same very".split()
)


# --- chunking ----------------------------------------------------------------------------------------------------


def _blocks(text: str) -> list[tuple[bool, str]]:
    """(is_heading, block) for each paragraph; headings are their own blocks."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        para = para.strip()
        if not para:
            continue
        lines = para.split("\n")
        if lines[0].lstrip().startswith("#"):
            out.append((True, lines[0].strip()))
            if len(lines) > 1:
                out.append((False, "\n".join(lines[1:]).strip()))
        else:
            out.append((False, para))
    return out


def _split_long(block: str, size: int) -> list[str]:
    """A block longer than a chunk, cut at sentence ends (or spaces) near the size."""
    pieces = []
    while len(block) > size:
        cut = max(block.rfind(". ", 0, size), block.rfind("\n", 0, size))
        if cut < size // 2:
            cut = block.rfind(" ", 0, size)
        if cut <= 0:
            cut = size
        pieces.append(block[: cut + 1].strip())
        block = block[cut + 1 :].strip()
    if block:
        pieces.append(block)
    return pieces


def _tail(text: str, overlap: int) -> str:
    if overlap <= 0 or len(text) <= overlap:
        return text if overlap > 0 else ""
    tail = text[-overlap:]
    space = tail.find(" ")
    return tail[space + 1 :] if 0 <= space < len(tail) - 1 else tail


def chunk_document(text: str, size: int = 2000, overlap: int = 200) -> list[str]:
    """Chunks of about `size` characters, starting at headings where possible, each beginning with the last
    `overlap` characters of the one before (cut at a word boundary)."""
    chunks: list[str] = []
    current: list[str] = []
    length = 0

    def flush():
        nonlocal current, length
        body = "\n\n".join(current).strip()
        if body and not all(b.startswith("#") for b in current):
            chunks.append(body)
            current, length = [], 0
            return True
        return False

    for is_heading, block in _blocks(text):
        if is_heading and current and length > size // 4:
            tail = _tail(chunks[-1], overlap) if flush() and overlap else ""
            current, length = ([tail] if tail else []), len(tail)
        for piece in _split_long(block, size) if len(block) > size else [block]:
            if current and length + len(piece) + 2 > size:
                if flush():
                    tail = _tail(chunks[-1], overlap)
                    current, length = ([tail] if tail else []), len(tail)
            current.append(piece)
            length += len(piece) + 2
    flush()
    return chunks


# --- JSON repair, grounding --------------------------------------------------------------------------------------


def _try_json(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return None


def json_payload(reply: str) -> str | None:
    """The JSON part of a model's reply: inside a ``` fence if there is one, from the first { or [ on (None: none)."""
    text = reply.strip()
    fenced = re.search(r"```(?:json)?\s*(.*?)(?:```|\Z)", text, re.DOTALL)
    if fenced:
        text = fenced.group(1).strip()
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    return text[min(starts) :] if starts else None


def parse_pairs(reply: str) -> tuple[list[tuple[str, str]], bool]:
    """(pairs, repaired) from a model's reply; ([], False) when nothing can be recovered."""
    text = json_payload(reply)
    if text is None:
        return [], False
    repaired = False
    data = _try_json(text)
    if data is None:
        repaired = True
        fixed = re.sub(r",\s*([}\]])", r"\1", text)  # trailing commas
        data = _try_json(fixed)
        if data is None:
            # truncated: keep every complete {...} object with a question and an answer
            objects = re.findall(r"\{[^{}]*\}", fixed)
            data = [o for o in (_try_json(re.sub(r",\s*}", "}", obj)) for obj in objects) if isinstance(o, dict)]
    if isinstance(data, dict):
        data = data.get("pairs") or data.get("questions") or data.get("data") or [data]
    if not isinstance(data, list):
        return [], repaired
    pairs = []
    for item in data:
        if not isinstance(item, dict):
            continue
        q = item.get("question", item.get("q", item.get("instruction")))
        a = item.get("answer", item.get("a", item.get("output")))
        if isinstance(q, str) and isinstance(a, str) and q.strip() and a.strip():
            pairs.append((normalize_text(q), normalize_text(a)))
    return pairs, repaired


def content_words(text: str) -> list[str]:
    return [w for w in _WORD.findall(text.lower()) if len(w) > 2 and w not in STOPWORDS]


def grounding(answer: str, chunk: str) -> float:
    """Share of the answer's content words that occur in the chunk (1.0 for an answer with none)."""
    words = content_words(answer)
    if not words:
        return 1.0
    vocabulary = set(content_words(chunk))
    return sum(w in vocabulary for w in words) / len(words)


# --- the endpoint ------------------------------------------------------------------------------------------------


class Endpoint:
    """POST /chat/completions with timeouts and retries (exponential backoff, or the server's Retry-After when
    longer) on timeouts, unreadable replies, 429 and 5xx: llmforge.openai_client does the sending."""

    def __init__(self, url: str, model: str, api_key: SecretStr | None, timeout: float, retries: int, backoff: float):
        from llmforge.openai_client import Client

        url = url.rstrip("/")
        self.url = url if url.endswith("/chat/completions") else url + "/chat/completions"
        self.model = model
        self.client = Client(self.url[: -len("/chat/completions")], api_key=api_key, timeout=timeout,
                             retries=retries, backoff=backoff, retry_statuses=(429, *range(500, 600)),
                             retry_unreachable=True)

    @property
    def requests(self) -> int:
        return self.client.requests

    @property
    def retried(self) -> int:
        return self.client.retried

    def chat(self, messages: list[dict[str, str]], temperature: float, max_tokens: int) -> str:
        from llmforge.openai_client import EndpointError

        body = {"model": self.model, "messages": messages, "temperature": temperature, "max_tokens": max_tokens}
        try:
            reply = self.client.chat_completion(body)
        except EndpointError as exc:
            if not exc.transient:
                raise LlmforgeError(
                    f"{self.url} answered HTTP {exc.status}: {exc.body}",
                    hint="check data.generate.endpoint, .model and the API key",
                ) from None
            raise ConnectionError(f"{self.url}: {exc.problem} (after {exc.attempts} attempts)") from None
        return reply["choices"][0]["message"].get("content") or ""


# --- the verb ----------------------------------------------------------------------------------------------------


def _chunk_id(source: str, chunk: str, cfg: GenerateConfig) -> str:
    key = f"{source}\0{chunk}\0{cfg.pairs_per_chunk}\0{cfg.model}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def plan(docs: list[str], generate_cfg: GenerateConfig, workspace: Workspace, *, force: bool = False) -> GeneratePlan:
    """stage.plan_generate: the documents chunked and what an earlier run finished; writes nothing."""
    from llmforge.data.stage import GeneratePlan, _GeneratePrepared

    cfg = generate_cfg
    if not cfg.endpoint:
        raise UsageError("no endpoint to generate with", hint="pass --endpoint URL (e.g. http://127.0.0.1:11434/v1)")
    if not cfg.model:
        raise UsageError("no model named for the endpoint", hint="pass --model NAME")
    files = sources.resolve_inputs(docs, sources.DOCUMENT_SUFFIXES)
    output = Path(cfg.output) if cfg.output else workspace.generated_file
    state = output.with_name(f".{output.name}.progress.jsonl")
    if not force and output.exists() and not state.exists():
        atomic.refuse_overwrite(output, force, "generated data")

    jobs = []
    warnings: list[str] = []
    for path in files:
        for item in sources.read(path, 10**9, warnings):
            if item.reason:
                raise UsageError(f"{item.file}:{item.line}: {item.field}: {item.reason}")
            text = normalize_text(item.obj["text"])
            for index, chunk in enumerate(chunk_document(text, cfg.chunk_chars, cfg.chunk_overlap)):
                jobs.append((str(path), index, chunk, _chunk_id(str(path), chunk, cfg)))

    done: dict[str, dict[str, Any]] = {}
    if state.exists() and not force:  # `force` starts over: run removes the progress file
        for line in state.read_text(encoding="utf-8").split("\n"):  # not splitlines(): U+2028 in a text
            try:
                entry = json.loads(line)
                done[entry["chunk_id"]] = entry
            except (ValueError, KeyError):
                continue  # a line cut short by an interrupted run: that chunk is simply redone
    finished = sum(chunk_id in done for *_, chunk_id in jobs)
    return GeneratePlan(
        inputs=[str(f) for f in files], output=str(output), endpoint=cfg.endpoint, model=cfg.model,
        chunks=len(jobs), chunks_done=finished, requests=len(jobs) - finished, force=force,
        prepared=_GeneratePrepared(generate=cfg, files=files, output=output, state=state, jobs=jobs, done=done),
    )  # fmt: skip


def generate(plan: GeneratePlan, *, progress: Callable[[int, int], None] | None = None) -> GenerateResult:
    """stage.run_generate: the requests, the grounding check, the question dedupe and the output file."""
    from llmforge.data.stage import GenerateResult

    p = plan.prepared
    cfg, jobs, output, state = p.generate, p.jobs, p.output, p.state
    done = dict(p.done)
    if plan.force:
        state.unlink(missing_ok=True)
    endpoint = Endpoint(cfg.endpoint, cfg.model, cfg.api_key, cfg.timeout, cfg.retries, cfg.backoff)
    skipped = failed = repaired_json = pairs_written = 0
    errors: list[str] = []
    dropped: Counter[str] = Counter()
    state.parent.mkdir(parents=True, exist_ok=True)
    with open(state, "a", encoding="utf-8") as log_fh:
        for number, (source, index, chunk, chunk_id) in enumerate(jobs, 1):
            if chunk_id in done:
                skipped += 1
            else:
                messages = [
                    {"role": "system", "content": SYSTEM_PROMPT},
                    {"role": "user", "content": USER_PROMPT.format(n=cfg.pairs_per_chunk, chunk=chunk)},
                ]
                try:
                    reply = endpoint.chat(messages, cfg.temperature, cfg.max_tokens)
                except ConnectionError as exc:
                    failed += 1
                    errors.append(f"{source} chunk {index}: {exc}")
                    if progress:
                        progress(number, len(jobs))
                    continue
                pairs, repaired = parse_pairs(reply)
                repaired_json += repaired
                kept = []
                if not pairs:
                    dropped["bad_json"] += 1
                for question, answer in pairs:
                    if grounding(answer, chunk) < cfg.min_grounding:
                        dropped["ungrounded"] += 1
                    else:
                        kept.append([question, answer])
                entry = {"chunk_id": chunk_id, "source": source, "chunk": index, "pairs": kept}
                log_fh.write(json.dumps(entry, ensure_ascii=False) + "\n")
                log_fh.flush()
                done[chunk_id] = entry
            if progress:
                progress(number, len(jobs))

    if failed and failed == len(jobs) - skipped and not done:
        raise LlmforgeError(
            f"every request failed: {errors[-1]}",
            hint="is the endpoint running? check data.generate.endpoint (an OpenAI-compatible /v1 base URL)",
        )
    seen: set[str] = set()
    with atomic.atomic_path(output) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        for source, index, _chunk, chunk_id in jobs:
            entry = done.get(chunk_id)
            for question, answer in entry["pairs"] if entry else []:
                key = " ".join(content_words(question)) or question.lower()
                if key in seen:
                    dropped["duplicate"] += 1
                    continue
                seen.add(key)
                record = {
                    "messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                    "metadata": {"source": source, "chunk": index, "chunk_id": chunk_id, "model": cfg.model},
                }
                fh.write(json.dumps(record, ensure_ascii=False) + "\n")
                pairs_written += 1
    return GenerateResult(
        output=str(output), documents=len(p.files), chunks=len(jobs), chunks_skipped=skipped, chunks_failed=failed,
        pairs=pairs_written, dropped=dict(dropped), repaired_json=repaired_json, requests=endpoint.requests,
        retries=endpoint.retried, errors=errors,
    )  # fmt: skip
