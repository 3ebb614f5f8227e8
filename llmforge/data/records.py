"""Record formats: detect each input record's format, validate it, and turn it into the canonical schema.

Every problem is a RecordError naming the field and the reason; the caller adds file and line.
Content is normalized (NFC, whitespace, control characters) here, in the same pass, so that "empty content"
means empty after cleaning.
"""

from __future__ import annotations

from typing import Any

from llmforge.data.clean import normalize_text

ROLES = ("system", "user", "assistant")
# ShareGPT speakers and their roles ("human/gpt/system and friends").
SHAREGPT_ROLES = {
    "human": "user", "user": "user", "person": "user", "prompter": "user",
    "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
    "model": "assistant", "bot": "assistant", "claude": "assistant", "llm": "assistant",
    "system": "system",
}  # fmt: skip
KINDS = ("messages", "preference", "kto", "text")


class RecordError(Exception):
    """One problem with one record: which field and why."""

    def __init__(self, field: str, reason: str):
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


def _type(value: Any) -> str:
    return {dict: "object", list: "list", str: "string", type(None): "null", bool: "boolean"}.get(
        type(value), type(value).__name__
    )


def _text(value: Any, field: str) -> str:
    """A required string, normalized; empty (after cleaning) is an error."""
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        # OpenAI content parts: [{"type": "text", "text": ...}]
        parts = []
        for i, part in enumerate(value):
            if part.get("type", "text") != "text" or not isinstance(part.get("text"), str):
                raise RecordError(f"{field}[{i}]", f"only text content parts are supported, got {part.get('type')!r}")
            parts.append(part["text"])
        value = "\n".join(parts)
    if not isinstance(value, str):
        if value is None:
            raise RecordError(field, "empty content (null)")
        raise RecordError(field, f"expected a string, got {_type(value)}")
    text = normalize_text(value)
    if not text:
        raise RecordError(field, "empty content")
    return text


def _messages(value: Any, field: str, *, need_assistant: bool = True) -> list[dict[str, str]]:
    if not isinstance(value, list):
        raise RecordError(field, f"expected a list of messages, got {_type(value)}")
    if not value:
        raise RecordError(field, "empty conversation")
    out = []
    for i, message in enumerate(value):
        # the common case first, without building field names that only an error needs
        if isinstance(message, dict) and (role := message.get("role")) in ROLES and isinstance(role, str):
            content = message.get("content")
            if isinstance(content, str) and (text := normalize_text(content)):
                out.append({"role": role, "content": text})
                continue
        where = f"{field}[{i}]"
        if not isinstance(message, dict):
            raise RecordError(where, f"expected an object with role and content, got {_type(message)}")
        role = message.get("role")
        if not isinstance(role, str):
            raise RecordError(f"{where}.role", "missing" if role is None else f"expected a string, got {_type(role)}")
        role = role.strip().lower()
        if role == "developer":  # OpenAI's newer name for the system message
            role = "system"
        if role not in ROLES:
            raise RecordError(
                f"{where}.role", f"unknown role {message.get('role')!r} (expected system, user or assistant)"
            )
        out.append({"role": role, "content": _text(message.get("content"), f"{where}.content")})
    _check_turns(out, field, need_assistant=need_assistant)
    return out


def _check_turns(messages: list[dict[str, str]], field: str, *, need_assistant: bool = True) -> None:
    previous = None
    for i, message in enumerate(messages):
        role = message["role"]
        if role == "system" and i > 0:
            raise RecordError(f"{field}[{i}].role", "system message after the first turn")
        if role == previous and role in ("user", "assistant"):
            raise RecordError(f"{field}[{i}].role", f"two {role} turns in a row")
        previous = role
    if need_assistant and not any(m["role"] == "assistant" for m in messages):
        raise RecordError(field, "no assistant turn")


def _prompt(value: Any, field: str) -> list[dict[str, str]]:
    if isinstance(value, str) or value is None:
        return [{"role": "user", "content": _text(value, field)}]
    messages = _messages(value, field, need_assistant=False)
    if messages[-1]["role"] != "user":
        raise RecordError(field, "prompt must end with a user turn")
    return messages


def _answer(value: Any, field: str, prompt: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
    if isinstance(value, str) or value is None:
        return [{"role": "assistant", "content": _text(value, field)}]
    messages = _messages(value, field, need_assistant=False)
    if prompt and messages[: len(prompt)] == prompt:  # chosen/rejected that repeat the whole conversation
        messages = messages[len(prompt) :]
    if not messages:
        raise RecordError(field, "empty content")
    for i, message in enumerate(messages):
        if message["role"] != "assistant":
            raise RecordError(f"{field}[{i}].role", f"expected assistant turns only, got {message['role']!r}")
    return messages


def _system(obj: dict, messages: list[dict[str, str]]) -> list[dict[str, str]]:
    system = obj.get("system")
    if system is None or system == "":
        return messages
    if messages and messages[0]["role"] == "system":
        return messages
    return [{"role": "system", "content": _text(system, "system")}, *messages]


def detect(obj: Any, dataset_kind: str | None = None) -> str:
    """The input format of one record, from its keys. In a KTO dataset (`dataset_kind` "kto") a prompt/completion
    record without its label is a KTO record with a missing label, not a chat: the error then names the label."""
    if not isinstance(obj, dict):
        raise RecordError("record", f"expected a JSON object, got {_type(obj)}")
    if "messages" in obj:
        return "messages"
    if "conversations" in obj:
        return "sharegpt"
    if "chosen" in obj or "rejected" in obj:
        return "preference"
    if "instruction" in obj:
        return "alpaca"
    if "label" in obj or (dataset_kind == "kto" and "prompt" in obj and "completion" in obj):
        return "kto"
    if "prompt" in obj and ("response" in obj or "completion" in obj):
        return "prompt_response"
    if "text" in obj:
        return "text"
    keys = ", ".join(sorted(map(str, obj))[:8]) or "none"
    raise RecordError(
        "record",
        f"unknown format (keys: {keys}); expected messages, conversations, instruction/output, "
        "prompt/response, prompt/completion, prompt/chosen/rejected, prompt/completion/label or text",
    )


def canonical(obj: Any, fmt: str = "auto") -> tuple[str, dict[str, Any]]:
    """(kind, canonical record) for one input record in `fmt` ('auto' detects it). Raises RecordError."""
    if not isinstance(obj, dict):
        raise RecordError("record", f"expected a JSON object, got {_type(obj)}")
    if fmt == "auto":
        fmt = detect(obj)
    if fmt == "messages":
        # OpenAI chat format; also the conversation log of `llmforge serve` (its metadata fields are ignored).
        return "messages", {"messages": _system(obj, _messages(obj.get("messages"), "messages"))}
    if fmt == "sharegpt":
        turns = obj.get("conversations")
        if not isinstance(turns, list):
            raise RecordError("conversations", f"expected a list, got {_type(turns)}")
        converted = []
        for i, turn in enumerate(turns):
            if not isinstance(turn, dict):
                raise RecordError(f"conversations[{i}]", f"expected an object with from and value, got {_type(turn)}")
            speaker = turn.get("from", turn.get("role"))
            role = SHAREGPT_ROLES.get(str(speaker).strip().lower()) if speaker is not None else None
            if role is None:
                raise RecordError(f"conversations[{i}].from", f"unknown role {speaker!r}")
            converted.append({"role": role, "content": turn.get("value", turn.get("content"))})
        try:
            messages = _messages(converted, "conversations")
        except RecordError as exc:  # report the field under its ShareGPT name
            raise RecordError(exc.field.replace(".content", ".value").replace(".role", ".from"), exc.reason) from None
        return "messages", {"messages": _system(obj, messages)}
    if fmt == "alpaca":
        instruction = _text(obj.get("instruction"), "instruction")
        extra = obj.get("input")
        if extra is not None and not isinstance(extra, str):
            raise RecordError("input", f"expected a string, got {_type(extra)}")
        extra = normalize_text(extra or "")
        user = f"{instruction}\n\n{extra}" if extra else instruction
        messages = [
            {"role": "user", "content": user},
            {"role": "assistant", "content": _text(obj.get("output"), "output")},
        ]
        return "messages", {"messages": _system(obj, messages)}
    if fmt == "prompt_response":
        field = "response" if "response" in obj else "completion"
        prompt = _prompt(obj.get("prompt"), "prompt")
        return "messages", {"messages": _system(obj, prompt + _answer(obj.get(field), field, prompt))}
    if fmt == "preference":
        prompt = _prompt(obj.get("prompt"), "prompt")
        chosen = _answer(obj.get("chosen"), "chosen", prompt)
        rejected = _answer(obj.get("rejected"), "rejected", prompt)
        if chosen == rejected:
            raise RecordError("chosen", "chosen and rejected are identical")
        return "preference", {"prompt": _system(obj, prompt), "chosen": chosen, "rejected": rejected}
    if fmt == "kto":
        # unpaired feedback (TRL's KTO): one completion, judged good (true) or bad (false)
        prompt = _prompt(obj.get("prompt"), "prompt")
        completion = _answer(obj.get("completion"), "completion", prompt)
        label = obj.get("label")
        if not isinstance(label, bool):  # 0/1 or "yes" are ambiguous enough to refuse rather than guess
            if "label" not in obj:
                raise RecordError("label", "missing (expected true or false: was the completion good?)")
            raise RecordError("label", f"expected true or false, got {_type(label)} {label!r}")
        return "kto", {"prompt": _system(obj, prompt), "completion": completion, "label": label}
    if fmt == "text":
        return "text", {"text": _text(obj.get("text"), "text")}
    raise RecordError("record", f"unknown format {fmt!r}")


def texts(record: dict[str, Any]) -> list[str]:
    """Every content string of a canonical record, in order."""
    if "text" in record:
        return [record["text"]]
    if "messages" in record:
        return [m["content"] for m in record["messages"]]
    return [m["content"] for key in _turn_keys(record) for m in record[key]]


def _turn_keys(record: dict[str, Any]) -> tuple[str, ...]:
    return ("prompt", "completion") if "completion" in record else ("prompt", "chosen", "rejected")


def answer_chars(record: dict[str, Any]) -> int:
    """Length of the answer: the shortest assistant turn (chosen/rejected for preference); text records: all."""
    if "text" in record:
        return len(record["text"])
    if "messages" in record:
        return min(len(m["content"]) for m in record["messages"] if m["role"] == "assistant")
    if "completion" in record:
        return min(len(m["content"]) for m in record["completion"])
    return min(len(m["content"]) for key in ("chosen", "rejected") for m in record[key])


def map_texts(record: dict[str, Any], fn) -> dict[str, Any]:
    """The record with `fn` applied to every content string."""
    if "text" in record:
        return {"text": fn(record["text"])}
    return {
        key: [{"role": m["role"], "content": fn(m["content"])} for m in value] if key != "label" else value
        for key, value in record.items()
    }


def plain(record: dict[str, Any]) -> str:
    """A readable plain-text rendering (for lengths without a tokenizer, hashing and the text export)."""
    if "text" in record:
        return record["text"]
    if "messages" in record:
        return "\n\n".join(f"{m['role']}: {m['content']}" for m in record["messages"])
    parts = [f"{m['role']}: {m['content']}" for m in record["prompt"]]
    if "completion" in record:
        parts += [f"{'good' if record['label'] else 'bad'}: {m['content']}" for m in record["completion"]]
        return "\n\n".join(parts)
    parts += [f"chosen: {m['content']}" for m in record["chosen"]]
    parts += [f"rejected: {m['content']}" for m in record["rejected"]]
    return "\n\n".join(parts)
