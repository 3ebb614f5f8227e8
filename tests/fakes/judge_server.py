"""A stand-in OpenAI-compatible server on 127.0.0.1 (a real HTTP server in a thread) for eval tests.

It answers `POST /v1/chat/completions` in two roles: as a judge (when the system prompt asks for rubric scores it
returns a JSON object: every criterion 5 when the ANSWER equals the REFERENCE, else 1), and as a model under test
(it looks the last user message up in `answers`, else says "I do not know"). `GET /v1/models` lists one model.
With "stream": true the answer comes as server-sent events. The same answers come from Ollama's `GET /api/tags` and `POST /api/chat` (non-streaming), as the real server
shapes them, for `ollama:NAME` targets. Every request is counted and kept, so tests can check what was (not) sent.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAIServer:
    def __init__(self, answers: dict[str, str] | None = None, model: str = "fake-model", broken: bool = False):
        self.answers = dict(answers or {})
        self.model = model
        self.broken = broken  # answer every completion with HTTP 500
        self.busy_next = 0  # the next N completions get 429 with `retry_after` as their Retry-After header
        self.retry_after = "1"
        self.requests: list[dict] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def _send(self, code: int, body: dict, headers: dict | None = None) -> None:
                data = json.dumps(body).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model"}]})
                elif self.path == "/api/tags":
                    tag = f"{server.model}:latest"
                    self._send(200, {"models": [{"name": tag, "model": tag, "digest": "ab" * 32, "size": 1234,
                                                 "modified_at": "2026-11-22T04:00:00Z"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                try:
                    body = json.loads(self.rfile.read(length) or b"{}")
                except ValueError:
                    self._send(400, {"error": {"message": "bad json"}})
                    return
                with server._lock:
                    server.requests.append({"path": self.path, "body": body,
                                            "auth": self.headers.get("Authorization")})
                if self.path == "/api/chat":
                    if body.get("model") not in (server.model, f"{server.model}:latest"):
                        self._send(404, {"error": f"model '{body.get('model')}' not found"})
                        return
                    self._send(200, server.ollama_reply(body))
                    return
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": "not found"}})
                    return
                if server.broken:
                    self._send(500, {"error": {"message": "the model crashed"}})
                    return
                if server.busy_next > 0:
                    server.busy_next -= 1
                    self._send(429, {"error": {"message": "slow down"}}, {"Retry-After": server.retry_after})
                    return
                if body.get("stream") is True:
                    self._stream(server.reply(body))
                    return
                self._send(200, server.reply(body))

            def _stream(self, reply: dict) -> None:
                # server-sent events, one word a chunk, as OpenAI's streaming API shapes them
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                words = reply["choices"][0]["message"]["content"].split(" ")
                for i, word in enumerate(words):
                    delta = {"content": word if i == 0 else " " + word}
                    chunk = {"id": reply["id"], "object": "chat.completion.chunk",
                             "choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}/v1"

    def completions(self, judge: bool | None = None) -> list[dict]:
        rows = [r["body"] for r in self.requests if r["path"].rstrip("/") == "/v1/chat/completions"]
        if judge is None:
            return rows
        return [b for b in rows if self._is_judge(b) == judge]

    @staticmethod
    def _is_judge(body: dict) -> bool:
        messages = body.get("messages") or []
        return bool(messages) and messages[0].get("role") == "system" and "rubric" in messages[0].get("content", "")

    def reply(self, body: dict) -> dict:
        messages = body.get("messages") or []
        if self._is_judge(body):
            system, user = messages[0]["content"], messages[-1]["content"]
            criteria = re.findall(r'"(\w+)": <1-(\d+)>', system)
            reference = user.split("REFERENCE:\n", 1)[1].split("\n\nANSWER:\n", 1)[0]
            answer = user.split("\n\nANSWER:\n", 1)[1]
            good = answer.strip() == reference.strip()
            text = "Scores: " + json.dumps({name: int(top) if good else 1 for name, top in criteria})
        else:
            question = next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")
            text = self.answers.get(question, "I do not know")
        words = text.split()[: int(body.get("max_tokens") or 10**6)]
        text = " ".join(words)
        return {
            "id": f"chatcmpl-{len(self.requests)}",
            "object": "chat.completion",
            "model": body.get("model"),
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": len(words), "total_tokens": 1 + len(words)},
        }

    def ollama_reply(self, body: dict) -> dict:
        options = body.get("options") or {}
        out = self.reply({"messages": body.get("messages"), "max_tokens": options.get("num_predict")})
        text = out["choices"][0]["message"]["content"]
        return {"model": body["model"], "created_at": "2026-11-22T04:00:00Z",
                "message": {"role": "assistant", "content": text}, "done": True, "done_reason": "stop",
                "eval_count": out["usage"]["completion_tokens"], "eval_duration": 1_000_000}

    def __enter__(self) -> FakeOpenAIServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
