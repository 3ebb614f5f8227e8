"""A stand-in Ollama server for tests: real HTTP on 127.0.0.1 (random port, in a thread), Ollama's REST API.

No Ollama server can be installed here (facts.md), so deploy tests talk to this one through the real `ollama`
client. It follows docs/api.md of ollama/ollama and the request shapes of the client 0.6.3:

- HEAD/POST /api/blobs/sha256:<hex>: 200/404; upload answers 201, or 400 when the body's sha256 is not the digest.
- POST /api/create: {model, files: {"x.gguf": digest} or from: <model>, adapters: {"x.gguf": digest}, template,
  system, parameters, messages, license, stream}; streams {"status": ...} lines ending in "success" (one object when
  stream is false); 400 for unknown blobs or a file that is not GGUF. A model made `from` another keeps its GGUF,
  template, system, messages and license unless the request gives new ones, and its parameters merged under the
  request's; a `from` model this server lacks ends the stream with an error (Ollama would try to pull it).
- POST /api/show: modelfile, parameters, template, system, license, details (format, family, families,
  parameter_size, quantization_level) and model_info: the GGUF's metadata plus general.parameter_count (counted from
  its tensors), with array values (tokenizer.ggml.tokens, merges, token_type...) empty unless `verbose` is true, as
  docs/api.md says. GET /api/tags, DELETE /api/delete (404 for unknown models), GET /api/version.
- POST /api/chat: like a deployment would, it renders the registered TEMPLATE over the model's MESSAGEs, SYSTEM
  and the request's messages (with Go's text/template through tests/tools/gorender when a binary is given, else
  with the family's Jinja twin from llmforge.chat_templates), generates greedily with llama.cpp from the uploaded
  GGUF (with its ADAPTER applied, as llama.cpp's --lora does), and stops at an end-of-generation token of the vocabulary or at a PARAMETER stop string, like Ollama.
  With no TEMPLATE it renders the GGUF's own chat template (Ollama's best case). NDJSON when streaming, always
  ending with done: true and done_reason "stop" or "length". Generation runs to the end before the first chunk
  is sent, so stop strings never need holding back. num_predict defaults to 128 here (Ollama: until the context
  is full) so that a model that never stops still ends a test. Like Ollama (server/routes.go, capabilities from
  the template), a request with `tools` to a model whose TEMPLATE never mentions .Tools, or with `think` to one
  that never mentions .Think, answers 400 "... does not support tools|thinking"; `think` reaches the template as
  .Think/.IsThinkSet.

Faults the tests switch on (`StandIn.fault`):
- "leak_template_tokens": special tokens are rendered into the text, the end-of-turn token included.
- "never_stop": end-of-generation tokens and stop strings are ignored: every answer ends with "length".
- "refuse_create": /api/create answers 400.
- "ignore_template": /api/create drops the template field (as a server that does not know it would).
"""

from __future__ import annotations

import codecs
import hashlib
import json
import subprocess
import tempfile
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

FAULTS = ("leak_template_tokens", "never_stop", "refuse_create", "ignore_template")
DEFAULT_NUM_PREDICT = 128


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _full(name: str) -> str:
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


class StandIn:
    """`with StandIn() as server:` ... `ollama.Client(host=server.host)`. `requests` logs (method, path, body)."""

    def __init__(self, *, gorender: Path | None = None, fault: str | None = None):
        if fault is not None and fault not in FAULTS:
            raise ValueError(f"unknown fault {fault!r}")
        self.fault = fault
        self.gorender = gorender
        self.models: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, Any]] = []
        self._blob_dir = Path(tempfile.mkdtemp(prefix="ollama-standin-"))
        self._llamas: dict[tuple[str, int], Any] = {}
        self._lock = threading.Lock()  # one llama.cpp context is not safe for two threads
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def __enter__(self) -> StandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._llamas.clear()
        import shutil

        shutil.rmtree(self._blob_dir, ignore_errors=True)

    # blobs ---------------------------------------------------------------------------------------------------
    def blob_path(self, digest: str) -> Path:
        return self._blob_dir / digest.replace(":", "-")

    # create ----------------------------------------------------------------------------------------------------
    def create(self, body: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
        if self.fault == "refuse_create":
            return 400, [{"error": "stand-in fault: create refused"}]
        name = body.get("model")
        files = body.get("files") or {}
        if not name:
            return 400, [{"error": "model is required"}]
        base: dict[str, Any] = {}
        if body.get("from"):
            if _full(body["from"]) not in self.models:
                return 200, [{"error": f"pull model manifest: file does not exist ({body['from']})"}]
            base = self.models[_full(body["from"])]
            digest = base["digest"]
            statuses = [{"status": f"using existing layer {digest}"}]
        else:
            ggufs = {f: d for f, d in files.items() if f.endswith(".gguf")}
            if len(ggufs) != 1:
                return 400, [{"error": "expected exactly one .gguf file in files"}]
            digest = next(iter(ggufs.values()))
            problem = self._gguf_blob_problem(digest)
            if problem:
                return 400, [{"error": problem}]
            statuses = [{"status": "parsing GGUF"}, {"status": f"using existing layer {digest}"}]
        adapters = list(base.get("adapters") or [])
        for adapter in (body.get("adapters") or {}).values():
            problem = self._gguf_blob_problem(adapter)
            if problem:
                return 400, [{"error": problem}]
            adapters.append(adapter)
            statuses.append({"status": f"using existing layer {adapter}"})
        for key in ("template", "system", "parameters", "messages", "license"):
            if body.get(key):
                layer = hashlib.sha256(json.dumps(body[key], sort_keys=True).encode()).hexdigest()
                statuses.append({"status": f"creating new layer sha256:{layer}"})
        template = body.get("template") or base.get("template") or ""
        self.models[_full(name)] = {
            "digest": digest,
            "adapters": adapters,
            "template": "" if self.fault == "ignore_template" else template,
            "system": body.get("system") or base.get("system") or "",
            "parameters": {**(base.get("parameters") or {}), **(body.get("parameters") or {})},
            "messages": list(body.get("messages") or base.get("messages") or []),
            "license": body.get("license") or base.get("license"),
            "modified_at": _now(),
            "size": self.blob_path(digest).stat().st_size,
        }
        statuses += [{"status": "writing manifest"}, {"status": "success"}]
        return 200, statuses

    def _gguf_blob_problem(self, digest: str) -> str | None:
        path = self.blob_path(digest)
        if not path.is_file():
            return f"blob {digest} not found: upload it to /api/blobs first"
        with open(path, "rb") as fh:
            if fh.read(4) != b"GGUF":
                return "invalid file magic"
        return None

    def model_info(self, digest: str, verbose: bool) -> tuple[dict[str, Any], dict[str, Any]]:
        """model_info and details of /api/show, read from the GGUF blob."""
        import gguf

        reader = gguf.GGUFReader(str(self.blob_path(digest)))
        info: dict[str, Any] = {}
        for key, found in reader.fields.items():
            if key.startswith("GGUF."):  # the header (version, counts), not metadata
                continue
            value = found.contents()
            info[key] = (list(value) if verbose else []) if isinstance(value, list) else value
        count = sum(int(t.n_elements) for t in reader.tensors)
        info["general.parameter_count"] = count
        arch = info.get("general.architecture") or ""
        file_type = info.get("general.file_type")
        try:
            level = gguf.LlamaFileType(file_type).name.replace("MOSTLY_", "").replace("ALL_", "")
        except (ValueError, TypeError):
            level = "unknown"
        details = {
            "parent_model": "",
            "format": "gguf",
            "family": arch,
            "families": [arch],
            "parameter_size": _human_number(count),
            "quantization_level": level,
        }
        return info, details

    def show(self, name: str, verbose: bool = False) -> dict[str, Any] | None:
        model = self.models.get(_full(name))
        if model is None:
            return None
        lines = [f"FROM {self.blob_path(model['digest'])}"]
        lines += [f"ADAPTER {self.blob_path(a)}" for a in model.get("adapters") or []]
        if model["template"]:
            lines.append(f'TEMPLATE """{model["template"]}"""')
        if model["system"]:
            lines.append(f'SYSTEM """{model["system"]}"""')
        params = []
        for key, value in model["parameters"].items():
            for v in value if isinstance(value, list) else [value]:
                lines.append(f"PARAMETER {key} {json.dumps(v) if isinstance(v, str) else v}")
                params.append(f"{key:<30} {json.dumps(v) if isinstance(v, str) else v}")
        model_info, details = self.model_info(model["digest"], verbose)
        return {
            "modelfile": "\n".join(lines) + "\n",
            "parameters": "\n".join(params),
            "template": model["template"],
            "system": model["system"],
            "license": model["license"] if isinstance(model["license"], str) else "\n".join(model["license"] or []),
            "details": details,
            "model_info": model_info,
            "capabilities": ["completion"],
            "modified_at": model["modified_at"],
        }

    # chat ------------------------------------------------------------------------------------------------------
    def _llama(self, digest: str, n_ctx: int, adapters: tuple[str, ...] = ()):
        import gguf

        from llmforge.llamacpp import open_llama

        fields = gguf.GGUFReader(str(self.blob_path(digest))).fields
        arch = fields["general.architecture"].contents()
        trained = fields.get(f"{arch}.context_length")
        if trained is not None:  # keep llama.cpp from warning about a context longer than the model's
            n_ctx = min(n_ctx, int(trained.contents()))
        key = (digest, n_ctx, adapters)
        if key not in self._llamas:
            if len(adapters) > 1:
                raise RuntimeError("the stand-in applies one ADAPTER at most")
            lora = {"lora_path": str(self.blob_path(adapters[0]))} if adapters else {}
            # Like a real Ollama on this CPU, it must survive llama.cpp's AMX fault (llmforge/llamacpp.py).
            self._llamas[key] = open_llama(
                self.blob_path(digest), n_ctx=n_ctx, n_threads=1, verbose=False, seed=0, **lora
            )
        return self._llamas[key]

    def render_prompt(
        self, model: dict[str, Any], llm: Any, messages: list[dict[str, Any]], think: bool | None = None
    ) -> str:
        conversation = [{"role": m["role"], "content": m.get("content") or ""} for m in model["messages"] + messages]
        if self.gorender is not None and model["template"]:
            request = {"template": model["template"], "messages": conversation, "system": model["system"]}
            request["think"] = think
            done = subprocess.run(
                [str(self.gorender)], input=json.dumps(request), capture_output=True, text=True, timeout=60
            )
            if done.returncode != 0:
                raise RuntimeError(done.stderr.strip())
            return done.stdout
        # The Jinja twin: Ollama's SYSTEM handling and message collation, then the family's HF template.
        from llmforge import chat_templates as ct

        if model["system"] and (not conversation or conversation[0]["role"] != "system"):
            conversation.insert(0, {"role": "system", "content": model["system"]})
        collated: list[dict[str, str]] = []
        for m in conversation:
            if collated and collated[-1]["role"] == m["role"]:
                collated[-1]["content"] += "\n\n" + m["content"]
            else:
                collated.append(dict(m))
        eos_id = llm.token_eos()
        eos = llm.detokenize([eos_id], special=True).decode("utf-8", "replace") if eos_id >= 0 else None
        if model["template"]:
            # A family, or the variant deploy builds from the GGUF's own template (deploy_verdict).
            embedded = llm.metadata.get("tokenizer.chat_template")
            bos_id = llm.token_bos()
            bos = llm.detokenize([bos_id], special=True).decode("utf-8", "replace") if bos_id >= 0 else None
            candidates = list(ct.FAMILIES.values())
            if embedded:
                candidates.append(ct.deploy_verdict(embedded, bos, eos).family)
            family = next(
                (f for f in candidates if f is not None and _safe_template(f, eos) == model["template"]),
                None,
            )
            if family is None:
                raise RuntimeError("this TEMPLATE is no family's; give the stand-in a gorender binary")
            jinja = family.jinja
        else:
            jinja = llm.metadata.get("tokenizer.chat_template") or "{{ messages[-1]['content'] }}"
        return ct.render(
            jinja,
            collated,
            add_generation_prompt=collated[-1]["role"] != "assistant",
            bos_token="",  # llama.cpp adds BOS itself when the GGUF says so
            eos_token=eos,
            **({} if think is None else {"enable_thinking": think}),
        )

    def chat(self, body: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
        name = body.get("model") or ""
        model = self.models.get(_full(name))
        if model is None:
            return 404, [{"error": f'model "{name}" not found, try pulling it first'}]
        messages = body.get("messages") or []
        started = time.perf_counter_ns()
        if not messages:
            return 200, [self._final(name, "", "load", started, 0, 0)]
        template = model["template"] or ""
        if body.get("tools") and ".Tools" not in template:
            return 400, [{"error": f'"{name}" does not support tools'}]
        if body.get("think") is not None and ".Think" not in template:
            return 400, [{"error": f'"{name}" does not support thinking'}]
        options = {**model["parameters"], **(body.get("options") or {})}
        stops = [s for s in options.get("stop") or [] if s]
        num_predict = int(options.get("num_predict") or DEFAULT_NUM_PREDICT)
        if num_predict < 0:
            num_predict = DEFAULT_NUM_PREDICT
        n_ctx = int(options.get("num_ctx") or 2048)
        with self._lock:
            llm = self._llama(model["digest"], n_ctx, tuple(model.get("adapters") or ()))
            try:
                prompt = self.render_prompt(model, llm, messages, think=body.get("think"))
            except Exception as e:  # a template that cannot render: Ollama answers 500 with the reason
                return 500, [{"error": f"template: {e}"}]
            pieces, reason, prompt_count = self._generate(llm, prompt, stops, num_predict, options)
        created = [
            {"model": name, "created_at": _now(), "message": {"role": "assistant", "content": p}, "done": False}
            for p in pieces
        ]
        final = self._final(name, "", reason, started, prompt_count, len(pieces))
        if body.get("stream", True):
            return 200, created + [final]
        final["message"]["content"] = "".join(pieces)
        return 200, [final]

    def _generate(self, llm, prompt: str, stops: list[str], num_predict: int, options: dict[str, Any]):
        import llama_cpp

        vocab = llama_cpp.llama_model_get_vocab(llm.model)
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))
        tokens = llm.tokenize(prompt.encode("utf-8"), add_bos=add_bos, special=True)
        leak = self.fault == "leak_template_tokens"
        never_stop = self.fault == "never_stop"
        decoder = codecs.getincrementaldecoder("utf-8")("replace")
        pieces: list[str] = []
        text, reason, count = "", "length", 0
        temperature = float(options.get("temperature", 0.8) or 0.0)
        llm.set_seed(int(options.get("seed", 0) or 0))
        for token in llm.generate(tokens, temp=temperature, top_k=int(options.get("top_k", 40)), reset=True):
            if count >= num_predict or len(tokens) + count >= llm.n_ctx():
                break
            count += 1
            eog = bool(llama_cpp.llama_vocab_is_eog(vocab, token))
            if eog and not leak and not never_stop:
                reason = "stop"
                break
            piece = decoder.decode(llm.detokenize([token], special=leak))
            if not never_stop and not leak:
                hits = [i for i in ((text + piece).find(s) for s in stops) if i >= 0]
                if hits:  # Ollama cuts the answer where a stop string begins
                    pieces, reason = _trim(pieces + [piece], min(hits)), "stop"
                    break
            if piece:
                pieces.append(piece)
                text += piece
            if eog and leak:
                reason = "stop"
                break
        return pieces, reason, len(tokens)

    def _final(self, name: str, content: str, reason: str, started: int, prompt_count: int, eval_count: int):
        total = time.perf_counter_ns() - started
        return {
            "model": name,
            "created_at": _now(),
            "message": {"role": "assistant", "content": content},
            "done": True,
            "done_reason": reason,
            "total_duration": total,
            "load_duration": 0,
            "prompt_eval_count": prompt_count,
            "prompt_eval_duration": 0,
            "eval_count": eval_count,
            "eval_duration": total,
        }


def _human_number(n: int) -> str:
    """details.parameter_size: Ollama writes counts like "8.0B" or "494.03M"."""
    for size, unit in ((1_000_000_000, "B"), (1_000_000, "M"), (1_000, "K")):
        if n >= size:
            return f"{n / size:.1f}{unit}" if unit == "B" else f"{n / size:.2f}{unit}"
    return str(n)


def _safe_template(family, eos: str | None) -> str | None:
    try:
        return family.ollama_template_for(eos)
    except Exception:
        return None


def _trim(pieces: list[str], cut: int) -> list[str]:
    """The pieces cut to `cut` characters in total."""
    out, used = [], 0
    for piece in pieces:
        if used + len(piece) > cut:
            if cut > used:
                out.append(piece[: cut - used])
            break
        out.append(piece)
        used += len(piece)
    return out


def _handler_for(server: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one response per connection: streamed bodies end when it closes

        def log_message(self, *args: object) -> None:  # keep test output clean
            pass

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while True:
                    size = int(self.rfile.readline().strip().split(b";")[0], 16)
                    if size == 0:
                        self.rfile.readline()
                        return data
                    data += self.rfile.read(size)
                    self.rfile.readline()
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _json(self) -> dict[str, Any]:
            raw = self._body()
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = None
            server.requests.append((self.command, self.path, body))
            return body if isinstance(body, dict) else {}

        def _send(self, status: int, objects: list[dict[str, Any]], *, stream: bool = False) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/x-ndjson" if stream else "application/json")
            self.end_headers()
            if stream:
                for obj in objects:
                    self.wfile.write(json.dumps(obj).encode() + b"\n")
                    self.wfile.flush()
            elif objects:
                self.wfile.write(json.dumps(objects[-1]).encode())

        def _blob(self, head: bool) -> None:
            digest = self.path.rsplit("/", 1)[-1]
            if not digest.startswith("sha256:") or len(digest) != 71:
                self._send(400, [{"error": "invalid digest format"}])
                return
            path = server.blob_path(digest)
            if head:
                server.requests.append(("HEAD", self.path, None))
                self.send_response(200 if path.is_file() else 404)
                self.end_headers()
                return
            data = self._body()
            server.requests.append(("POST", self.path, f"<{len(data)} bytes>"))
            actual = "sha256:" + hashlib.sha256(data).hexdigest()
            if actual != digest:
                self._send(400, [{"error": f"digest mismatch, expected {digest!r}, got {actual!r}"}])
                return
            path.write_bytes(data)
            self._send(201, [])

        def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
            if self.path.startswith("/api/blobs/"):
                self._blob(head=True)
            else:
                self.send_response(200 if self.path == "/" else 404)
                self.end_headers()

        def do_GET(self) -> None:  # noqa: N802
            server.requests.append(("GET", self.path, None))
            if self.path == "/api/tags":
                models = [
                    {
                        "name": name,
                        "model": name,
                        "modified_at": m["modified_at"],
                        "size": m["size"],
                        "digest": m["digest"].split(":", 1)[1],
                        "details": {"format": "gguf", "family": "llama", "families": None},
                    }
                    for name, m in server.models.items()
                ]
                self._send(200, [{"models": models}])
            elif self.path == "/api/version":
                self._send(200, [{"version": "0.0.0-standin"}])
            elif self.path == "/":
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"Ollama is running")
            else:
                self._send(404, [{"error": "not found"}])

        def do_POST(self) -> None:  # noqa: N802
            if self.path.startswith("/api/blobs/"):
                self._blob(head=False)
                return
            body = self._json()
            stream = bool(body.get("stream", True))
            if self.path == "/api/create":
                status, objects = server.create(body)
                self._send(status, objects, stream=stream and status == 200)
            elif self.path == "/api/show":
                shown = server.show(body.get("model") or "", verbose=bool(body.get("verbose")))
                if shown is None:
                    self._send(404, [{"error": f"model '{body.get('model')}' not found"}])
                else:
                    self._send(200, [shown])
            elif self.path == "/api/chat":
                status, objects = server.chat(body)
                self._send(status, objects, stream=stream and status == 200)
            else:
                self._send(404, [{"error": "not found"}])

        def do_DELETE(self) -> None:  # noqa: N802
            body = self._json()
            if self.path != "/api/delete":
                self._send(404, [{"error": "not found"}])
            elif server.models.pop(_full(body.get("model") or ""), None) is None:
                self._send(404, [{"error": f"model '{body.get('model')}' not found"}])
            else:
                self._send(200, [])

    return Handler
