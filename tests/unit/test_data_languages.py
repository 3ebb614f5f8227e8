"""data.languages: records are detected (model bundled in py3langid's wheel), counted in the report and filtered;
unknown codes fail at config time; an empty list changes nothing."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from llmforge.config import load_config
from llmforge.config.data import LANGUAGE_CODES, DataConfig
from llmforge.config.model import ModelConfig
from llmforge.data import prepare
from llmforge.errors import ConfigError
from llmforge.workspace import Workspace

pytest.importorskip("py3langid")

ENGLISH = [
    ("How do I water a cactus in winter?", "Water it sparingly, about once a month, and keep it in a bright spot."),
    ("What is the capital of Australia?", "The capital of Australia is Canberra, not Sydney as many people think."),
    ("Why is the sky blue during the day?", "Sunlight is scattered by the air, and blue light is scattered the most."),
    ("Can you recommend a good book about history?", "Try a general history of the world written for curious readers."),
]
GERMAN = [
    ("Wie koche ich einen guten Kaffee?", "Nimm frisch gemahlene Bohnen und Wasser, das nicht mehr ganz kocht."),
    ("Wann fährt der nächste Zug nach Berlin?", "Der nächste Zug nach Berlin fährt in zwanzig Minuten vom Gleis drei."),
    ("Warum ist der Himmel am Abend rot?", "Am Abend ist der Weg des Lichts durch die Luft länger als am Mittag."),
]
FRENCH = [
    ("Comment faire une bonne omelette ?", "Battez les œufs avec un peu de sel et faites cuire à feu doux."),
    ("Quelle est la plus haute montagne de France ?", "Le mont Blanc est la plus haute montagne du pays."),
]
JAPANESE = [
    ("東京でおすすめの公園はどこですか？", "新宿御苑はとても広くて、春には桜がきれいに咲きます。"),
]


def chat(question: str, answer: str) -> dict:
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]}


def mixed(path: str) -> str:
    rows = [chat(q, a) for q, a in ENGLISH + GERMAN + FRENCH + JAPANESE]
    random.Random(0).shuffle(rows)
    Path(path).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def written(ws: Workspace) -> list[dict]:
    return [json.loads(line) for split in ("train", "val", "test") if ws.split_file(split).exists()
            for line in ws.split_file(split).read_text().splitlines()]  # fmt: skip


def run(ws: str, **cfg) -> tuple[dict, Workspace]:
    workspace = Workspace(Path(ws))
    data = DataConfig(inputs=[mixed("in.jsonl")], dedupe={"near": False}, **cfg)
    return prepare(data, ModelConfig(), workspace), workspace


def test_languages_are_counted_and_others_filtered(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    report, ws = run("work", languages=["en", "de"])
    assert report["languages"] == {"en": 4, "de": 3, "fr": 2, "ja": 1}
    assert report["filtered"] == {"language": 3}
    assert report["counts"]["filtered"] == 3 and report["counts"]["rejected"] == 0
    assert report["counts"]["written"] == 7
    kept = {r["messages"][0]["content"] for r in written(ws)}
    assert kept == {q for q, _ in ENGLISH + GERMAN}
    assert any("language: fr (not in data.languages)" in e for e in report["filtered_examples"])
    assert not ws.rejected_file.exists() or not ws.rejected_file.read_text()
    md = (ws.data_dir / "report.md").read_text()
    assert "Languages detected (records past the other filters): en 4, de 3, fr 2, ja 1." in md


def test_pooled_workers_detect_like_one_process(tmp_path, monkeypatch):
    from llmforge.data import pipeline

    monkeypatch.chdir(tmp_path)
    one, ws_one = run("one", languages=["fr", "ja"], workers=1)
    monkeypatch.setattr(pipeline, "CHUNK_BYTES", 300)
    two, ws_two = run("two", languages=["fr", "ja"], workers=2)
    assert one["languages"] == two["languages"] == {"en": 4, "de": 3, "fr": 2, "ja": 1}
    assert one["filtered"] == two["filtered"] == {"language": 7}
    for split in ("train", "val", "test"):
        a, b = ws_one.split_file(split), ws_two.split_file(split)
        assert (a.read_bytes() if a.exists() else None) == (b.read_bytes() if b.exists() else None)


def test_no_languages_means_no_detection_and_the_same_outputs(tmp_path, monkeypatch):
    from llmforge.data import languages

    monkeypatch.chdir(tmp_path)
    plain, ws_plain = run("plain")
    monkeypatch.setattr(languages, "detect", lambda record: pytest.fail("detection ran without data.languages"))
    empty, ws_empty = run("empty", languages=[])
    assert "languages" not in plain and "languages" not in empty
    assert plain["counts"] == empty["counts"] and plain["counts"]["written"] == 10
    for split in ("train", "val", "test"):
        a, b = ws_plain.split_file(split), ws_empty.split_file(split)
        assert (a.read_bytes() if a.exists() else None) == (b.read_bytes() if b.exists() else None)
    assert "Languages detected" not in (ws_empty.data_dir / "report.md").read_text()


def test_the_sample_is_the_user_and_assistant_text_truncated():
    from llmforge.data import languages

    record = {"messages": [{"role": "system", "content": "Du bist ein hilfreicher Assistent."},
                           {"role": "user", "content": "x" * 10_000},
                           {"role": "assistant", "content": "never reached"}]}  # fmt: skip
    text = languages.sample(record)
    assert "Assistent" not in text and len(text) == languages.SAMPLE_CHARS
    assert languages.detect({"text": "   "}) == "zxx"
    assert languages.detect({"prompt": [{"role": "user", "content": "Wie spät ist es bitte?"}],
                             "chosen": [{"role": "assistant", "content": "Es ist kurz nach acht Uhr abends."}],
                             "rejected": [{"role": "assistant", "content": "No idea."}]}) == "de"  # fmt: skip


def test_unknown_codes_fail_at_load_naming_the_key_and_close_codes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("llmforge.yaml").write_text("project:\n  name: demo\ndata:\n  languages: [en, deu]\n")
    with pytest.raises(ConfigError) as err:
        load_config(Path("llmforge.yaml"))
    assert "data.languages" in err.value.message and "'deu'" in err.value.message
    assert "close valid codes: de" in err.value.message
    with pytest.raises(ValueError, match="close valid codes: en"):
        DataConfig(languages=["EN"])
    assert DataConfig(languages=["de", "en", "de"]).languages == ["de", "en"]


def test_the_valid_codes_are_the_models_iso_639_1_codes():
    from llmforge.data import languages

    assert {code for code in languages.labels() if len(code) == 2} == LANGUAGE_CODES
