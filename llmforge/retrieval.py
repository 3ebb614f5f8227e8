"""Retrieval for chat: index a folder of documents (paragraph chunks, BM25 in an SQLite file) and find the passages
that best match a question, with their sources. Shared by `llmforge chat --docs` and `serve.retrieval`.

Standard library only; an optional embedding model (transformers, imported on use) reranks the BM25 candidates.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import shutil
import sqlite3
from collections import Counter
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from llmforge.config.retrieval import RetrievalConfig
from llmforge.errors import UsageError
from llmforge.workspace import Workspace

log = logging.getLogger(__name__)

EXTENSIONS = (".md", ".markdown", ".txt", ".rst", ".html", ".htm")
SCHEMA_VERSION = 1  # raise it when the tables change: an index of another version is rebuilt
CANDIDATES_PER_PASSAGE = 4  # BM25 candidates per wanted passage that an embedding model reranks
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Passage:
    """One chunk of a document: where it comes from (path relative to the folder, 1-based lines) and its text."""

    source: str
    start_line: int
    end_line: int
    text: str
    score: float = 0.0

    @property
    def where(self) -> str:
        lines = str(self.start_line) if self.start_line == self.end_line else f"{self.start_line}-{self.end_line}"
        return f"{self.source}:{lines}"

    def to_dict(self, number: int) -> dict[str, Any]:
        return {"index": number, "source": self.source, "lines": [self.start_line, self.end_line],
                "score": round(self.score, 4), "text": self.text}  # fmt: skip


@dataclass(frozen=True)
class IndexReport:
    path: Path
    files: int
    indexed: int
    removed: int
    skipped: list[str]
    chunks: int

    def to_dict(self) -> dict[str, Any]:
        return {"index": str(self.path), "files": self.files, "indexed": self.indexed, "removed": self.removed,
                "skipped": self.skipped, "chunks": self.chunks}  # fmt: skip


# ---------------------------------------------------------------- reading and chunking


class _HtmlText(HTMLParser):
    """The visible text of an HTML page, kept on the source line it starts on (so line ranges stay true)."""

    def __init__(self, n_lines: int):
        super().__init__(convert_charrefs=True)
        self.lines = [""] * (n_lines + 1)
        self._hidden = 0

    def handle_starttag(self, tag, attrs):
        self._hidden += tag in ("script", "style")

    def handle_endtag(self, tag):
        if tag in ("script", "style") and self._hidden:
            self._hidden -= 1

    def handle_data(self, data):
        if self._hidden:
            return
        line = self.getpos()[0] - 1
        for offset, piece in enumerate(data.split("\n")):
            if line + offset < len(self.lines):
                self.lines[line + offset] += piece


def read_lines(data: bytes, suffix: str) -> list[str] | None:
    """The text lines of a document's bytes, or None when they are not UTF-8 text (binaries are skipped)."""
    if b"\0" in data[:8192]:
        return None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return None
    lines = text.splitlines()
    if suffix.lower() in (".html", ".htm"):
        parser = _HtmlText(len(lines))
        parser.feed(text)
        parser.close()
        lines = [" ".join(line.split()) for line in parser.lines[: len(lines)]]
    return lines


def chunk_lines(lines: list[str], chunk_chars: int, overlap_chars: int) -> list[tuple[int, int, str]]:
    """Split a document into (first line, last line, text) chunks of at most `chunk_chars` characters.

    Paragraphs (blank-line separated) stay whole in one chunk when they fit; a longer one continues in the next
    chunk at a line end, and a line longer than a chunk splits by characters. Each chunk starts with the last lines
    of the one before that fit in `overlap_chars`, so a passage cut at a boundary is found whole in one of the two."""
    paragraphs: list[list[tuple[int, str]]] = [[]]
    for number, line in enumerate(lines, 1):
        text = line.rstrip()
        if text.strip():
            paragraphs[-1] += [(number, text[at : at + chunk_chars]) for at in range(0, len(text), chunk_chars)]
        elif paragraphs[-1]:
            paragraphs.append([])

    chunks: list[tuple[int, int, str]] = []
    current: list[tuple[int, str, bool]] = []  # (line number, text, starts a paragraph)
    fresh = 0  # units of `current` not repeated from the previous chunk

    def size(units) -> int:  # an upper bound: every unit counted with a two-character separator
        return sum(len(u[1]) + 2 for u in units)

    def close() -> list[tuple[int, str, bool]]:
        text = "".join(("\n\n" if new else "\n") * (i > 0) + t for i, (_, t, new) in enumerate(current))
        chunks.append((current[0][0], current[-1][0], text))
        kept: list[tuple[int, str, bool]] = []
        for unit in reversed(current):
            if size(kept) + len(unit[1]) > overlap_chars:
                break
            kept.insert(0, unit)
        return kept

    for paragraph in filter(None, paragraphs):
        units = [(n, t, i == 0) for i, (n, t) in enumerate(paragraph)]
        if fresh and size(current) + size(units) > chunk_chars:  # keep the paragraph whole in the next chunk
            current, fresh = close(), 0
        for unit in units:
            while current and size(current) + len(unit[1]) > chunk_chars:
                if fresh:
                    current, fresh = close(), 0
                else:  # the overlap leaves no room for this unit: repeat less
                    current.pop(0)
            current.append(unit)
            fresh += 1
    if fresh:
        close()
    return chunks


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


# ---------------------------------------------------------------- the index file


def default_index_path(docs: Path, workspace: Workspace) -> Path:
    """One index per documents folder under the workspace: its name for people, a hash of its path for uniqueness."""
    resolved = docs.resolve()
    digest = hashlib.sha256(str(resolved).encode()).hexdigest()[:10]
    name = re.sub(r"[^\w.-]", "_", resolved.name or "docs").lstrip(".") or "docs"
    return workspace.retrieval_dir / f"{name}-{digest}.sqlite"


def fts5_available() -> bool:
    try:
        sqlite3.connect(":memory:").execute("CREATE VIRTUAL TABLE t USING fts5(x)")
    except sqlite3.OperationalError:
        return False
    return True


def _settings(cfg: RetrievalConfig, fts: bool) -> str:
    return f"v{SCHEMA_VERSION} chunk={cfg.chunk_chars} overlap={cfg.overlap_chars} fts5={fts}"


def _create(db: sqlite3.Connection, fts: bool) -> None:
    db.executescript("""
        CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE files (path TEXT PRIMARY KEY, size INTEGER, mtime_ns INTEGER, sha256 TEXT, skipped INTEGER);
        CREATE TABLE chunks (id INTEGER PRIMARY KEY, path TEXT NOT NULL, start_line INTEGER, end_line INTEGER,
                             text TEXT NOT NULL);
        CREATE INDEX chunks_path ON chunks(path);
    """)
    if fts:  # external content: the text is stored once, in chunks
        db.execute("CREATE VIRTUAL TABLE chunks_fts USING fts5(text, content='chunks', content_rowid='id', "
                   "tokenize='porter unicode61 remove_diacritics 2')")  # fmt: skip


def _documents(docs: Path) -> list[Path]:
    found = []
    for root, dirs, files in os.walk(docs):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        found += [Path(root, f) for f in sorted(files) if not f.startswith(".") and f.lower().endswith(EXTENSIONS)]
    return found


def update_index(docs: Path, index: Path, cfg: RetrievalConfig) -> IndexReport:
    """Bring `index` up to date with the folder: files whose size, mtime and content are unchanged keep their chunks;
    changed, new and removed files are (re)indexed. With any change the new index is written beside the old one and
    renamed over it, so a reader (a running server) never sees a half-written index."""
    from llmforge.atomic import publish, reserve

    docs = Path(docs)
    if not docs.is_dir():
        raise UsageError(f"documents folder not found: {docs}", hint="pass a folder of .md/.txt/.rst/.html files")
    fts = fts5_available()
    settings = _settings(cfg, fts)
    paths = _documents(docs)
    stats = {}
    for path in paths:
        try:
            st = path.stat()
        except OSError:  # a broken link: no document
            continue
        stats[path.relative_to(docs).as_posix()] = (path, st.st_size, st.st_mtime_ns)

    known: dict[str, tuple[int, int, str]] = {}
    rebuild = True  # a new index, or one made with other settings (or unreadable): start afresh
    if index.is_file():
        try:
            with _read_only(index) as db:
                if _meta(db, "settings") == settings:
                    rows = db.execute("SELECT path, size, mtime_ns, sha256 FROM files")
                    known = {row[0]: (row[1], row[2], row[3]) for row in rows}
                    rebuild = False
        except sqlite3.DatabaseError as exc:
            log.warning("rebuilding the unreadable index %s: %s", index, exc)

    # (name, suffix, size, mtime, sha, bytes); bytes None: the same content as indexed, or unreadable
    changes: list[tuple[str, str, int, int, str, bytes | None]] = []
    for name, (path, size, mtime) in stats.items():
        old = known.get(name)
        if old is not None and old[0] == size and old[1] == mtime:
            continue
        try:
            data = path.read_bytes()
        except OSError as exc:  # unreadable now (permissions, a broken link): skipped, tried again next time
            log.warning("skipping %s: %s", path, exc)
            data, mtime = b"\0", -1
        sha = hashlib.sha256(data).hexdigest()
        same = old is not None and old[2] == sha
        changes.append((name, path.suffix, size, mtime, sha, None if same else data))
    removed = [name for name in known if name not in stats]

    if changes or removed or rebuild:
        tmp = reserve(index)
        try:
            if not rebuild:
                shutil.copyfile(index, tmp)
            db = sqlite3.connect(tmp)
            try:
                if rebuild:
                    _create(db, fts)
                    db.execute("INSERT INTO meta VALUES ('settings', ?)", (settings,))
                for name in removed:
                    _drop(db, name, fts)
                for name, suffix, size, mtime, sha, data in changes:
                    if data is None:  # touched, same bytes: keep the chunks
                        db.execute("UPDATE files SET size=?, mtime_ns=? WHERE path=?", (size, mtime, name))
                        continue
                    _drop(db, name, fts)
                    lines = read_lines(data, suffix)
                    for start, end, text in chunk_lines(lines or [], cfg.chunk_chars, cfg.overlap_chars):
                        cur = db.execute("INSERT INTO chunks (path, start_line, end_line, text) VALUES (?, ?, ?, ?)",
                                         (name, start, end, text))  # fmt: skip
                        if fts:
                            db.execute("INSERT INTO chunks_fts (rowid, text) VALUES (?, ?)", (cur.lastrowid, text))
                    db.execute("INSERT INTO files VALUES (?, ?, ?, ?, ?)", (name, size, mtime, sha, lines is None))
                db.commit()
            finally:
                db.close()
            publish(tmp, index)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    with _read_only(index) as db:
        chunks = db.execute("SELECT COUNT(*) FROM chunks").fetchone()[0]
        skipped = [row[0] for row in db.execute("SELECT path FROM files WHERE skipped ORDER BY path")]
    indexed = sum(1 for c in changes if c[5] is not None and c[0] not in skipped)
    return IndexReport(index, len(stats), indexed, len(removed), skipped, chunks)


def _meta(db: sqlite3.Connection, key: str) -> str | None:
    row = db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
    return row[0] if row else None


def _drop(db: sqlite3.Connection, name: str, fts: bool) -> None:
    if fts:  # an external-content FTS table forgets a row only when told its old text
        db.execute("INSERT INTO chunks_fts (chunks_fts, rowid, text) SELECT 'delete', id, text FROM chunks "
                   "WHERE path=?", (name,))  # fmt: skip
    db.execute("DELETE FROM chunks WHERE path=?", (name,))
    db.execute("DELETE FROM files WHERE path=?", (name,))


class _read_only:
    """A read-only connection to an index file, closed on exit (sqlite3's own context manager only commits)."""

    def __init__(self, path: Path):
        self.db = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, *exc) -> None:
        self.db.close()


# ---------------------------------------------------------------- searching


def bm25_search(index: Path, query: str, limit: int) -> list[Passage]:
    """The `limit` chunks that best match `query` by BM25 (SQLite FTS5's, else the same formula here)."""
    terms = words(query)
    if not terms:
        return []
    with _read_only(index) as db:
        tables = {row[0] for row in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "chunks_fts" in tables and fts5_available():
            # each term quoted: a question may hold FTS5 syntax (AND, NEAR, *, ") that must match as words
            match = " OR ".join('"' + t.replace('"', '""') + '"' for t in dict.fromkeys(terms))
            rows = db.execute(
                "SELECT c.path, c.start_line, c.end_line, c.text, -bm25(chunks_fts) FROM chunks_fts "
                "JOIN chunks c ON c.id = chunks_fts.rowid WHERE chunks_fts MATCH ? "
                "ORDER BY bm25(chunks_fts), c.id LIMIT ?",
                (match, limit),
            ).fetchall()
            return [Passage(*row) for row in rows]
        rows = db.execute("SELECT path, start_line, end_line, text, id FROM chunks ORDER BY id").fetchall()
    return _bm25(rows, terms, limit)


def _bm25(rows: list[tuple], terms: list[str], limit: int, k1: float = 1.2, b: float = 0.75) -> list[Passage]:
    # The formula FTS5's bm25() uses (same k1 and b), for an SQLite built without FTS5.
    docs = [Counter(words(row[3])) for row in rows]
    if not docs:
        return []
    average = sum(sum(d.values()) for d in docs) / len(docs) or 1.0
    wanted = list(dict.fromkeys(terms))
    idf = {}
    for t in wanted:
        n = sum(1 for d in docs if t in d)
        idf[t] = max(math.log((len(docs) - n + 0.5) / (n + 0.5)), 1e-6)
    scored = []
    for row, counts in zip(rows, docs):
        length = sum(counts.values())
        score = sum(idf[t] * counts[t] * (k1 + 1) / (counts[t] + k1 * (1 - b + b * length / average))
                    for t in wanted if t in counts)  # fmt: skip
        if score > 0:
            scored.append((-score, row[4], Passage(row[0], row[1], row[2], row[3], score)))
    scored.sort(key=lambda s: (s[0], s[1]))
    return [s[2] for s in scored[:limit]]


class Embedder:
    """Mean-pooled, normalised hidden states of a local model (sentence-transformers folders load as HF models)."""

    def __init__(self, name: str):
        from llmforge.errors import require_extra

        require_extra("serve.retrieval.embedding_model", "train", "torch", "transformers")
        try:
            from transformers import AutoModel, AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=True)
            self.model = AutoModel.from_pretrained(name, local_files_only=True).eval()
        except (OSError, ValueError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise UsageError(
                f"serve.retrieval.embedding_model: cannot load {name!r}: {first}",
                hint="name a local model folder (e.g. a downloaded sentence-transformers model), or unset it",
            ) from None
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token or self.tokenizer.unk_token

    def __call__(self, texts: list[str]):
        import torch

        with torch.inference_mode():
            batch = self.tokenizer(texts, padding=True, truncation=True, max_length=512, return_tensors="pt")
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            return torch.nn.functional.normalize(pooled.float(), dim=-1)


class Retriever:
    """Search one index; with an embedder, rerank BM25's candidates by reciprocal-rank fusion of both orders."""

    def __init__(self, index: Path, cfg: RetrievalConfig, report: IndexReport | None = None):
        self.index = Path(index)
        self.cfg = cfg
        self.report = report
        self.embedder = Embedder(cfg.embedding_model) if cfg.embedding_model else None

    def search(self, query: str) -> list[Passage]:
        k = self.cfg.top_k
        found = bm25_search(self.index, query, k * CANDIDATES_PER_PASSAGE if self.embedder else k)
        if self.embedder is not None and len(found) > 1:
            vectors = self.embedder([query] + [p.text for p in found])
            similarity = (vectors[1:] @ vectors[0]).tolist()
            by_embedding = sorted(range(len(found)), key=lambda i: -similarity[i])
            fused = {i: 1 / (60 + rank) for rank, i in enumerate(range(len(found)))}
            for rank, i in enumerate(by_embedding):
                fused[i] += 1 / (60 + rank)
            order = sorted(fused, key=lambda i: -fused[i])
            found = [Passage(found[i].source, found[i].start_line, found[i].end_line, found[i].text,
                             fused[i]) for i in order]  # fmt: skip
        passages, total = [], 0
        for passage in found[:k]:
            if passages and total + len(passage.text) > self.cfg.max_context_chars:
                break
            passages.append(passage)
            total += len(passage.text)
        if passages and len(passages[0].text) > self.cfg.max_context_chars:
            first = passages[0]
            passages[0] = Passage(first.source, first.start_line, first.end_line,
                                  first.text[: self.cfg.max_context_chars], first.score)  # fmt: skip
        return passages


def open_docs(cfg: RetrievalConfig, workspace: Workspace, docs: Path | str | None = None) -> Retriever:
    """Index the documents folder (`docs`, else cfg.docs) where cfg.index or the workspace says, and open it."""
    folder = docs if docs is not None else cfg.docs
    if folder is None:
        raise UsageError("retrieval needs a documents folder", hint="set serve.retrieval.docs, or pass --docs FOLDER")
    folder = Path(folder).expanduser()
    index = Path(cfg.index).expanduser() if cfg.index else default_index_path(folder, workspace)
    report = update_index(folder, index, cfg)
    return Retriever(index, cfg, report)


# ---------------------------------------------------------------- into the prompt

INSTRUCTION = (
    "Answer using the numbered passages below where they help, and cite them by number, like [1]. "
    "If they do not hold the answer, say so."
)


def with_passages(question: str, passages: list[Passage]) -> str:
    """The user's message with the passages before it. Put into the user turn, not a system message: every chat
    template takes a user message, while some (Gemma's) refuse a system one."""
    if not passages:
        return question
    blocks = [f"[{n}] {p.where}\n{p.text}" for n, p in enumerate(passages, 1)]
    return "\n\n".join([INSTRUCTION, *blocks, f"Question: {question}"])


def augment(messages: list[dict[str, Any]], retriever: Retriever) -> tuple[list[dict[str, Any]], list[Passage]]:
    """The messages with the passages for the last user message put into it, and those passages."""
    last = next((i for i in range(len(messages) - 1, -1, -1) if messages[i].get("role") == "user"), None)
    if last is None or not isinstance(messages[last].get("content"), str):
        return messages, []
    passages = retriever.search(messages[last]["content"])
    if not passages:
        return messages, []
    changed = list(messages)
    changed[last] = {**messages[last], "content": with_passages(messages[last]["content"], passages)}
    return changed, passages
