"""A stand-in OpenAI-compatible endpoint: a real HTTP server on 127.0.0.1 (random port) in a thread.

POST /v1/chat/completions answers from the document in the prompt (between <document> tags), deterministically:
each pair asks about one sentence of the chunk and answers with that sentence. It can be told to fail the next N
requests (HTTP 500), to answer with broken JSON (trailing commas, truncation, code fences), or with ungrounded
answers, or to answer slowly (for timeouts). Every request body is kept in `requests` for assertions.

It also answers `data augment`'s prompts: a question between <question> tags gets N rephrasings ("echo" mode:
the question itself, then a copy differing only in case and a leading word), and a scope prompt gets N numbered
out-of-scope questions with a refusal answer.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeOpenAI:
    def __init__(self) -> None:
        self.fail_next = 0
        self.mode = "ok"  # ok | trailing_comma | truncated | fenced | garbage | ungrounded
        self.requests: list[dict] = []
        self.authorizations: list[str | None] = []  # the Authorization header of each request
        self.status_on_fail = 500
        self.retry_after: str | None = None  # sent as the Retry-After header of the failed answers
        self.slow_next = 0  # the next N requests answer only after `delay` seconds
        self.delay = 0.0
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def answer(self, body: dict) -> str:
        prompt = body["messages"][-1]["content"]
        if self.mode == "garbage":
            return "I cannot help with that."
        if "<question>" in prompt:
            return self._paraphrases(prompt)
        if "The assistant only helps with" in prompt:
            return self._refusals(prompt)
        wanted = int(re.search(r"Write (\d+) question", prompt).group(1))
        document = re.search(r"<document>\n(.*)\n</document>", prompt, re.DOTALL).group(1)
        sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", document) if len(s.strip()) > 20]
        pairs = []
        for sentence in sentences[:wanted]:
            topic = " ".join(sentence.split()[:4])
            answer = sentence if self.mode != "ungrounded" else "Bananas orbit quietly around purple mountains forever."
            pairs.append({"question": f"What does the text say about {topic}?", "answer": answer})
        text = json.dumps({"pairs": pairs})
        if self.mode == "trailing_comma":
            text = text.replace("}]}", "},]}")
        elif self.mode == "truncated":
            text = text[: text.rfind("{")]  # the last pair cut off mid-way
        elif self.mode == "fenced":
            text = f"Here you go:\n```json\n{text}\n```"
        elif self.mode == "garbage":
            text = "I cannot help with that."
        return text

    def _paraphrases(self, prompt: str) -> str:
        wanted = int(re.search(r"Write (\d+) different rephrasings", prompt).group(1))
        question = re.search(r"<question>\n(.*)\n</question>", prompt, re.DOTALL).group(1)
        if self.mode == "echo":
            near = "Please, " + question.upper()
            return json.dumps({"paraphrases": [question, near][:wanted]})
        forms = [f"Could you tell me this: {question}", f"I would like to know the following. {question}",
                 f"Quick question for you, {question}"]
        return json.dumps({"paraphrases": forms[:wanted]})

    def _refusals(self, prompt: str) -> str:
        wanted = int(re.search(r"Write (\d+) varied questions", prompt).group(1))
        topics = ["baking sourdough bread", "the offside rule in football", "tax law in Peru", "knitting socks",
                  "orbital mechanics of comets", "writing a wedding speech", "tuning a violin", "growing tomatoes"]
        start = len(self.requests) * 3  # different topics on each request
        pairs = [{"question": f"Can you explain {topics[(start + i) % len(topics)]} to me (case {start + i})?",
                  "answer": "Sorry, I can only help with questions about the product."} for i in range(wanted)]
        return json.dumps({"pairs": pairs})

    def _handler(self):
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                fake.requests.append(body)
                fake.authorizations.append(self.headers.get("Authorization"))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, {"error": {"message": "not found"}})
                    return
                if fake.slow_next > 0:
                    fake.slow_next -= 1
                    time.sleep(fake.delay)
                if fake.fail_next > 0:
                    fake.fail_next -= 1
                    headers = {"Retry-After": fake.retry_after} if fake.retry_after else {}
                    self._send(fake.status_on_fail, {"error": {"message": "temporarily overloaded"}}, headers)
                    return
                content = fake.answer(body)
                self._send(
                    200,
                    {
                        "id": "chatcmpl-fake",
                        "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
                        ],
                    },
                )

            def _send(self, status: int, payload: dict, headers: dict | None = None) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        return Handler
