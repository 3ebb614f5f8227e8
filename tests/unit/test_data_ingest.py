"""Every input format and file type, and every validation problem with its file and line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from llmforge.config.data import DataConfig
from llmforge.data import validate
from llmforge.data.records import RecordError, canonical
from llmforge.errors import UsageError

CHAT = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4"}]


def jsonl(path: str | Path, *rows) -> Path:
    path = Path(path)
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows), encoding="utf-8")
    return path


def problems(*inputs: str, **cfg) -> list[str]:
    return [str(p) for p in validate(DataConfig(inputs=list(inputs), **cfg)).problems]


# --- formats -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "obj, expected",
    [
        ({"messages": CHAT}, CHAT),
        ({"instruction": "What is 2+2?", "input": "", "output": "4"}, CHAT),
        (
            {"instruction": "Add", "input": "2 and 2", "output": "4"},
            [{"role": "user", "content": "Add\n\n2 and 2"}, {"role": "assistant", "content": "4"}],
        ),
        ({"prompt": "What is 2+2?", "response": "4"}, CHAT),
        ({"prompt": "What is 2+2?", "completion": "4"}, CHAT),
        ({"prompt": [CHAT[0]], "completion": [CHAT[1]]}, CHAT),
        ({"conversations": [{"from": "human", "value": "What is 2+2?"}, {"from": "gpt", "value": "4"}]}, CHAT),
        (
            {
                "conversations": [
                    {"from": "system", "value": "Be brief."},
                    {"from": "user", "value": "What is 2+2?"},
                    {"from": "chatgpt", "value": "4"},
                ]
            },  # fmt: skip
            [{"role": "system", "content": "Be brief."}, *CHAT],
        ),
        ({"messages": [{"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}, CHAT[1]]}, CHAT),
    ],
    ids=[
        "openai",
        "alpaca",
        "alpaca-input",
        "prompt-response",
        "prompt-completion",
        "prompt-completion-lists",
        "sharegpt",
        "sharegpt-system",
        "openai-content-parts",
    ],  # fmt: skip
)
def test_chat_formats_become_messages(obj, expected):
    kind, record = canonical(obj)
    assert kind == "messages"
    assert record == {"messages": expected}


def test_serve_conversation_log_ingests_as_is():
    logged = {
        "messages": CHAT,
        "metadata": {"client": "127.0.0.1", "latency_ms": 12},
        "model": "support-bot",
        "created": 1763700000,
    }
    assert canonical(logged) == ("messages", {"messages": CHAT})


def test_preference_strings_and_lists():
    kind, record = canonical({"prompt": "Hi?", "chosen": "Hello!", "rejected": "Go away."})
    assert kind == "preference"
    assert record == {
        "prompt": [{"role": "user", "content": "Hi?"}],
        "chosen": [{"role": "assistant", "content": "Hello!"}],
        "rejected": [{"role": "assistant", "content": "Go away."}],
    }
    # chosen/rejected that repeat the whole conversation (Anthropic HH style) keep only the answer
    prompt = [{"role": "user", "content": "Hi?"}]
    _, record2 = canonical(
        {
            "prompt": prompt,
            "chosen": prompt + [{"role": "assistant", "content": "Hello!"}],
            "rejected": prompt + [{"role": "assistant", "content": "Go away."}],
        }  # fmt: skip
    )
    assert record2 == record


def test_text_and_forced_format():
    assert canonical({"text": "Once upon a time."}) == ("text", {"text": "Once upon a time."})
    with pytest.raises(RecordError, match="instruction"):
        canonical({"text": "x"}, "alpaca")


# --- files -----------------------------------------------------------------------------------------------------------


def _kinds(*inputs: str) -> dict[str, int]:
    result = validate(DataConfig(inputs=list(inputs)))
    assert result.ok, [str(p) for p in result.problems]
    return result.kinds


def test_json_array_and_wrapped_object_with_line_numbers(tmp_path):
    Path("a.json").write_text(json.dumps([{"messages": CHAT}, {"text": "x"}], indent=2))
    Path("b.json").write_text(
        '{"version": 1,\n "data": [\n  {"messages": ' + json.dumps(CHAT) + '},\n  {"messages": []}\n]}'
    )
    assert problems("a.json") == ["a.json:14: record: a text record in a messages dataset (one kind per dataset)"]
    assert problems("b.json") == ["b.json:4: messages: empty conversation"]


def test_csv_tsv_parquet_gzip_txt_md_folders_and_globs(tmp_path):
    Path("d").mkdir()
    Path("d/a.csv").write_text('instruction,input,output\n"Add, please","2 and 2","4"\nName a color,,"Blue,\nor red"\n')
    Path("d/b.tsv").write_text("prompt\tresponse\nHi?\tHello!\n")
    rows = [{"messages": CHAT}, {"messages": json.dumps(CHAT)}]
    Path("d/c.csv").write_text("messages\n" + "\n".join('"' + json.dumps(CHAT).replace('"', '""') + '"' for _ in rows))
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist([{"messages": CHAT}, {"messages": CHAT}]), "d/e.parquet")
    with gzip.open("d/f.jsonl.gz", "wt") as fh:
        fh.write(json.dumps({"messages": CHAT}) + "\n")
    assert _kinds("d") == {"messages": 8}
    assert _kinds("d/*.csv") == {"messages": 4}
    Path("docs").mkdir()
    Path("docs/a.txt").write_text("A plain document.\n")
    Path("docs/b.md").write_text("# Title\n\nSome markdown.\n")
    assert _kinds("docs") == {"text": 2}


def test_csv_row_problems_name_their_line(tmp_path):
    Path("a.csv").write_text('instruction,output\n"multi\nline",ok\nonly-one-field\nq,\n')
    assert problems("a.csv") == ["a.csv:4: row: 1 fields, the header has 2", "a.csv:5: output: empty content"]


def test_missing_and_unsupported_inputs_are_usage_errors(tmp_path):
    with pytest.raises(UsageError, match="input not found"):
        validate(DataConfig(inputs=["nope.jsonl"]))
    Path("x.xml").write_text("<a/>")
    with pytest.raises(UsageError, match="unsupported file type"):
        validate(DataConfig(inputs=["x.xml"]))
    with pytest.raises(UsageError, match="no data files match"):
        validate(DataConfig(inputs=["*.jsonl"]))
    with pytest.raises(UsageError, match="no input data"):
        validate(DataConfig())


# --- validation problems: every one with its line -------------------------------------------------------------------


def test_every_validation_problem_with_its_line(tmp_path):
    path = jsonl(
        "bad.jsonl",
        {"messages": CHAT},  # 1 ok
        '{"messages": [',  # 2 invalid JSON
        {"messages": "hello"},  # 3 wrong type
        {"messages": [{"role": "user", "content": 5}, CHAT[1]]},  # 4 wrong type of content
        {"messages": [{"role": "user", "content": "   "}, CHAT[1]]},  # 5 empty content
        {"messages": [{"role": "wizard", "content": "hi"}, CHAT[1]]},  # 6 unknown role
        {"messages": [CHAT[0]]},  # 7 no assistant turn
        {"messages": [CHAT[0], CHAT[0], CHAT[1]]},  # 8 two user turns in a row
        {"prompt": "Hi", "chosen": "Same", "rejected": "Same"},  # 9 chosen == rejected (and the kind differs)
        {"conversations": [{"from": "alien", "value": "x"}]},  # 10 unknown sharegpt role
        [1, 2],  # 11 not an object
        {"foo": "bar"},  # 12 unknown format
        {"messages": [CHAT[1], CHAT[1]]},  # 13 two assistant turns
        {"messages": [CHAT[0], CHAT[1], {"role": "system", "content": "late"}]},  # 14 system after the first turn
        {"messages": [{"role": "user", "content": None}, CHAT[1]]},  # 15 null content
    )
    found = problems(str(path))
    assert found == [
        "bad.jsonl:2: json: invalid JSON (unexpected end of data: line 1 column 15 (char 14))",
        "bad.jsonl:3: messages: expected a list of messages, got string",
        "bad.jsonl:4: messages[0].content: expected a string, got int",
        "bad.jsonl:5: messages[0].content: empty content",
        "bad.jsonl:6: messages[0].role: unknown role 'wizard' (expected system, user or assistant)",
        "bad.jsonl:7: messages: no assistant turn",
        "bad.jsonl:8: messages[1].role: two user turns in a row",
        "bad.jsonl:9: chosen: chosen and rejected are identical",
        "bad.jsonl:10: conversations[0].from: unknown role 'alien'",
        "bad.jsonl:11: record: expected a JSON object, got list",
        "bad.jsonl:12: record: unknown format (keys: foo); expected messages, conversations, instruction/output, "
        "prompt/response, prompt/completion, prompt/chosen/rejected, prompt/completion/label or text",
        "bad.jsonl:13: messages[1].role: two assistant turns in a row",
        "bad.jsonl:14: messages[2].role: system message after the first turn",
        "bad.jsonl:15: messages[0].content: empty content (null)",
    ]


def test_preference_in_chat_dataset_is_flagged(tmp_path):
    jsonl("mix.jsonl", {"messages": CHAT}, {"prompt": "Hi", "chosen": "A", "rejected": "B"})
    assert problems("mix.jsonl") == [
        "mix.jsonl:2: record: a preference record in a messages dataset (one kind per dataset)"
    ]


def test_invalid_utf8_bom_and_absurd_length(tmp_path):
    good = json.dumps({"messages": CHAT}).encode()
    long = json.dumps({"messages": [CHAT[0], {"role": "assistant", "content": "x" * 500}]}).encode() + b"\n"
    Path("enc.jsonl").write_bytes(
        b"\xef\xbb\xbf" + good + b"\n"  # 1: BOM at the start of the file: removed, a warning
        + good[:20] + b"\xff\xfe" + good[20:] + b"\n"  # 2: invalid UTF-8
        + b"\xef\xbb\xbf" + good + b"\n"  # 3: a BOM in the middle: concatenated files
        + long  # 4
    )  # fmt: skip
    result = validate(DataConfig(inputs=["enc.jsonl"], max_record_chars=400))
    assert [str(p) for p in result.problems] == [
        "enc.jsonl:2: encoding: invalid UTF-8 at byte 21",
        "enc.jsonl:3: encoding: byte-order mark inside the file (concatenated files?)",
        f"enc.jsonl:4: record: absurd length: {len(long)} bytes (limit 400)",
    ]
    assert result.warnings == ["enc.jsonl:1: encoding: UTF-8 byte-order mark at the start of the file removed"]
    assert result.valid == 1


def test_invalid_utf8_in_a_document_names_its_line(tmp_path):
    Path("doc.txt").write_bytes(b"line one\nline two \xc3\x28 here\n")
    assert problems("doc.txt") == ["doc.txt:2: encoding: invalid UTF-8 (byte 19 of the file)"]


def test_developer_role_is_a_system_message():
    _, record = canonical({"messages": [{"role": "developer", "content": "Be brief."}, *CHAT]})
    assert record["messages"][0] == {"role": "system", "content": "Be brief."}


def test_a_folder_of_records_ignores_its_readme(tmp_path):
    Path("d").mkdir()
    jsonl("d/a.jsonl", {"messages": CHAT})
    Path("d/README.md").write_text("# About this data\n")
    assert _kinds("d") == {"messages": 1}
    assert _kinds("d/README.md") == {"text": 1}  # named explicitly, it is read


# --- hostile and broken files: a problem of that file, never a crash of the whole read -----------------------------


def _parquet_bytes(rows: list[dict]) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows), buffer)
    return buffer.getvalue()


def _broken_gzip(lines: int) -> bytes:
    """A gzipped JSONL whose compressed stream is damaged two thirds of the way in (zlib fails, not gzip)."""
    import random

    rng = random.Random(0)  # text that does not compress to nothing, so the damage lands mid-stream
    rows = [{"messages": [{"role": "user", "content": " ".join(str(rng.random()) for _ in range(8))}, CHAT[1]]}
            for _ in range(lines)]  # fmt: skip
    packed = bytearray(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    middle = len(packed) * 2 // 3
    packed[middle : middle + 64] = b"\xff" * 64
    return bytes(packed)


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("bad.parquet", b"PAR1 not parquet at all PAR1", "bad.parquet: file: cannot read: Parquet file size is"),
        ("empty.parquet", b"", "empty.parquet: file: cannot read: Parquet file size is 0 bytes"),
        ("cut.parquet", _parquet_bytes([{"messages": CHAT}] * 50)[:300], "cut.parquet: file: cannot read: Parquet"),
        ("broken.jsonl.gz", _broken_gzip(2000), "broken.jsonl.gz: file: cannot read past the record at line "),
        ("deep.json", b"[" * 100_000 + b"]" * 100_000, "deep.json:1: json: invalid JSON (nested too deeply)"),
        ("huge-int.json", b'[{"text": ' + b"9" * 5000 + b"}]", "huge-int.json:1: json: invalid JSON (Exceeds"),
        (
            "long-cell.csv",
            b'instruction,output\n"' + b"x" * 200_000 + b'",ok\nName a color,Blue\n',
            "long-cell.csv:2: row: field larger than field limit (131072)",
        ),
    ],
    ids=["not-parquet", "empty-parquet", "truncated-parquet", "corrupt-gzip", "deep-json", "huge-int", "long-csv-cell"],
)
def test_a_broken_file_is_a_problem_of_that_file_only(tmp_path, name, content, expected):
    Path("d").mkdir()
    Path("d", name).write_bytes(content)
    jsonl("d/good.jsonl", {"messages": CHAT}, {"messages": CHAT})
    result = validate(DataConfig(inputs=["d"]))
    found = [str(p) for p in result.problems]
    assert len(found) == 1 and found[0].startswith(f"d/{expected}"), found
    assert result.kinds == {"messages": result.valid} and result.valid >= 2  # the folder's other files are read


def test_records_before_a_break_are_kept_and_the_break_is_named(tmp_path):
    Path("cut.jsonl.gz").write_bytes(gzip.compress(b"".join(json.dumps({"messages": CHAT}).encode() + b"\n"
                                                            for _ in range(3000)))[:-200])  # fmt: skip
    result = validate(DataConfig(inputs=["cut.jsonl.gz"]))
    assert result.valid > 1000
    assert [str(p) for p in result.problems] == [
        f"cut.jsonl.gz: file: cannot read past the record at line {result.valid}: "
        "Compressed file ended before the end-of-stream marker was reached"
    ]
    assert result.unreadable == {"cut.jsonl.gz": result.problems[0].reason}


def test_a_long_document_becomes_records_cut_at_paragraph_breaks(tmp_path):
    paragraphs = [f"Paragraph {i}. " + "word " * (i % 7 + 3) for i in range(40)]
    text = "\n\n".join(paragraphs) + "\n"
    Path("doc.md").write_text(text)
    from llmforge.data import sources

    items = list(sources.read(Path("doc.md"), 200, []))
    assert len(items) > 5 and all(len(i.obj["text"]) <= 200 for i in items)
    assert "".join(i.obj["text"] for i in items) == text  # nothing lost or repeated
    for item in items:  # each piece is whole paragraphs and starts on its own line of the file
        assert item.obj["text"].startswith("Paragraph ")
        assert item.obj["text"].endswith("\n\n" if item is not items[-1] else "\n")
        assert text.splitlines()[item.line - 1].startswith(item.obj["text"].split("\n")[0])
    # under the limit it is one record, as it always was
    assert [i.obj for i in sources.read(Path("doc.md"), len(text), [])] == [{"text": text}]


@pytest.mark.parametrize("size", [1, 40, 200, 10**6])
def test_jsonl_read_in_chunks_of_bytes_reads_what_read_reads(tmp_path, size):
    """data prepare cuts a JSONL file into runs of whole lines (sources.read_batches) that workers parse
    (sources.jsonl_items): the same records and problems on the same lines as sources.read, however it is cut."""
    from llmforge.data import sources

    lines = [b"\xef\xbb\xbf" + json.dumps({"messages": CHAT}).encode(), b"", b"   ", b"{bad", b'{"text": "caf\xc3\xa9"}',
             b'{"text": "\xff"}', b"\xef\xbb\xbf{}", b'{"text": "' + b"x" * 150 + b'"}', b"[1, 2]\r", b" \t ",
             b'{"instruction": "last", "output": "no newline"}']  # fmt: skip
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines))
    gz = tmp_path / "in.jsonl.gz"
    whole = gzip.compress(b"\n".join(lines * 20))
    gz.write_bytes(whole[: len(whole) * 2 // 3])  # breaks off
    for source in (path, gz):
        want_warnings: list[str] = []
        want = [(i.line, i.obj) if i.reason is None else i for i in sources.read(source, 100, want_warnings)]
        got_warnings: list[str] = []
        got = []
        for batch in sources.read_batches(source, 100, got_warnings, size):
            got += sources.jsonl_items(batch, 100) if isinstance(batch, sources.Lines) else batch
        assert got == want and got_warnings == want_warnings
