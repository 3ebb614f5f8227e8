"""Normalization (NFC, whitespace outside code blocks, control characters) and PII scrubbing, false positives too."""

from __future__ import annotations

import pytest

from llmforge.data.clean import PiiScrubber, luhn_ok, normalize_text


def test_nfc_and_odd_spaces_and_controls():
    decomposed = "Cafe\u0301\u00a0menu\x07\u200b"
    assert normalize_text(decomposed) == "Caf\u00e9 menu"
    assert normalize_text("a\r\nb\rc\u2028d") == "a\nb\nc\nd"
    assert normalize_text("\x00\x1b[31mred\x7f\x85") == "[31mred"


def test_whitespace_outside_code_blocks_only():
    text = (
        "  Intro line.   \n\n\n\n\nNext paragraph.\t\n```python\ndef f():   \n\n\n\n    return 1\n```\nAfter.  \n\n\n"
    )
    assert normalize_text(text) == (
        "Intro line.\n\nNext paragraph.\n```python\ndef f():   \n\n\n\n    return 1\n```\nAfter."
    )


def test_indented_code_keeps_its_indentation():
    assert normalize_text("    indented = True\n    more = 1") == "    indented = True\n    more = 1"


@pytest.mark.parametrize(
    "kind, text, expected",
    [
        ("email", "write to jane.doe+news@mail.example.co.uk today", "write to <EMAIL> today"),
        ("url", "docs at https://example.com/a/b?x=1&y=2.", "docs at <URL>."),
        ("url", "see www.example.org/page, then", "see <URL>, then"),
        ("url", "(link: https://en.wikipedia.org/wiki/Foo_(bar))", "(link: <URL>)"),
        ("phone", "call +1 (555) 123-4567 now", "call <PHONE> now"),
        ("phone", "call 555-123-4567 now", "call <PHONE> now"),
        ("phone", "ring +447911123456", "ring <PHONE>"),
        ("phone", "tel. 030 1234 5678", "tel. <PHONE>"),
        ("ip", "the host 10.0.0.1 answered", "the host <IP> answered"),
        ("ip", "gateway 192.168.1.254.", "gateway <IP>."),
        ("card", "card 4111 1111 1111 1111 expires", "card <CARD> expires"),
        ("card", "card 5500-0000-0000-0004.", "card <CARD>."),
    ],
)
def test_each_pii_kind_is_replaced_and_counted(kind, text, expected):
    scrub = PiiScrubber()
    assert scrub(text) == expected
    assert scrub.counts[kind] == 1
    assert sum(scrub.counts.values()) == 1


@pytest.mark.parametrize(
    "text",
    [
        "Python 3.10.12 is installed",  # a version, three parts
        "upgrade to version 1.2.3.4 today",  # four parts after 'version'
        "release v2.0.0.1 notes",
        "1.2.3.4.5 is a five-part version",
        "300.1.1.1 is not an address",
        "on 2024-01-15 we met",  # a date, not a phone
        "due 15/01/2024 or 01.02.2024",
        "at 12:30:45 sharp",
        "pi is 3.14159265",
        "1 000 000 people",
        "ISBN 978-3-16-148410-0",
        "card 4111 1111 1111 1112 fails Luhn",
        "order number 123456789",
        "user@localhost has no domain",
        "a ratio of 1:2 and 2024",
    ],
)
def test_false_positives_are_left_alone(text):
    scrub = PiiScrubber()
    assert scrub(text) == text
    assert sum(scrub.counts.values()) == 0


def test_each_kind_can_be_switched_off():
    text = "mail a@b.com from 10.0.0.1 at https://x.org call 555-123-4567 card 4111111111111111"
    assert PiiScrubber(email=False, url=False, phone=False, ip=False, card=False)(text) == text
    assert PiiScrubber(email=False)(text) == "mail a@b.com from <IP> at <URL> call <PHONE> card <CARD>"


def test_luhn():
    assert luhn_ok("4111111111111111") and luhn_ok("79927398713")
    assert not luhn_ok("4111111111111112")


from hypothesis import example, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
@example("\n\t0")  # once kept its tab on the first pass (multi-line rule) and lost it on the second
def test_normalize_is_idempotent_and_clean(text):
    once = normalize_text(text)
    assert normalize_text(once) == once
    assert not any(ch in once for ch in "\r\x00\x07\x1b\u200b\ufeff")


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="abc@. 0123456789-+:/wh", max_size=80))
def test_scrubbing_is_idempotent(text):
    once = PiiScrubber()(text)
    assert PiiScrubber()(once) == once


# --- many texts at once (data prepare's chunks) ------------------------------------------------------------------

# Pieces that exercise every branch of normalize_text: blanks before newlines, blank-line runs, fences, indentation,
# carriage returns, odd spaces, controls, NUL (normalize_texts' own separator), decomposed accents, other scripts.
PIECES = [
    "a", "b", "Σ", "ς", "é", "東", "😀", " ", "  ", "\t", "\n", " \n", "\t\n", "\n\n\n", "    ", "\n    ", "\n\t",
    "```", "~~~", "``", "\r", "\r\n", "\x00", "\x01", "\x1f", "\x85", "\xa0", "\u2003", "\u2028", "\u200b", "\ufeff",
    "\u1680", "e\u0301", "\u0301", "\u212b", "\x0b",
]  # fmt: skip


def test_normalize_texts_is_normalize_text_of_each():
    import random

    from llmforge.data.clean import normalize_texts

    rng = random.Random(3)
    rare = set("\x00\x01\x1f\x85\xa0\u2003\u2028\u200b\ufeff\r\x0b`~")
    for count in [*range(11)] * 200 + [600, 1000]:  # many: in batches
        texts = ["".join(rng.choice(PIECES) for _ in range(rng.randint(0, 25))) for _ in range(count)]
        if rng.random() < 0.5:  # mostly texts without rare characters: the joined path
            texts = [t for t in texts if not rare & set(t)]
        assert normalize_texts(texts) == [normalize_text(t) for t in texts]


def test_normalize_texts_in_numpy_is_normalize_text_of_each():
    """Batches of 8 texts or more without fences or NUL take the numpy way (NFC, odd spaces and line separators,
    blanks before newlines, blank-line runs over the code points); a text with a control character goes the string
    way, the rest of its batch the numpy way."""
    import random

    from llmforge.data.clean import normalize_texts

    rng = random.Random(7)
    plain = [*"abΣς東😀", "é", "e\u0301", "\u0301", "\u212b", "\u1680", " ", "  ", "\t", "\n", " \n", "\t\n",
             "\n\n\n", "\n \n\n", "    ", "\n    ", "\n\t", "``", "~~"]  # fmt: skip
    rare = ["\x01", "\x1f", "\x7f", "\x9f", "\u200b", "\ufeff", "\x0b", "\u2060"]
    # rewritten in numpy too: odd spaces, carriage returns, line separators
    rewrites = ["\r", "\r\n", "\r\r\n", " \r\n", "\r \n", "\x85", "\xa0", "\u2000", "\u2003", "\u2028", "\u2029",
                "\u3000", "\u202f", "e\u0301\r"]  # fmt: skip
    for round_ in range(600):
        alphabet = plain + rewrites if round_ % 2 else plain
        texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30))) for _ in range(rng.randint(8, 40))]
        if round_ % 3 == 0:  # ASCII only
            texts = [t.encode("ascii", "ignore").decode() for t in texts]
        if round_ % 4 == 1:
            k = rng.randrange(len(texts))
            texts[k] = texts[k][: len(texts[k]) // 2] + rng.choice(rare) + texts[k][len(texts[k]) // 2 :]
        assert normalize_texts(texts) == [normalize_text(t) for t in texts]


def test_normalized_text_keeps_no_blank_but_space_tab_newline_and_ogham():
    """dedupe.encoded_words splits bytes (ASCII blanks only) where exact keys split str: equal only while no other
    Unicode blank survives normalization."""
    blanks = [chr(c) for c in range(0x110000) if chr(c).isspace()]
    assert sorted({ch for b in blanks for ch in normalize_text(f"x{b}y{b}\nz {b}")} & set(blanks)) == [
        "\t", "\n", " ", "\u1680"
    ]  # fmt: skip


def test_may_change_says_when_the_scrubber_has_nothing_to_do():
    scrub = PiiScrubber()
    for text in ["no pii here", "call 555-123-4567", "a@b.example", "see www.x.org", "https://x.org", "v٣"]:
        if not scrub.may_change(text):
            assert scrub(text) == text and not scrub.counts
    assert not scrub.may_change("plain words\x00and more") and scrub.may_change("plain\x00mail me: a@b.example")


# --- NFC of many texts at once (clean.nfc_texts: numpy for base + one mark, unicodedata for the rest) -------------


def _nfc_each(texts: list[str]) -> list[str]:
    import unicodedata

    return [unicodedata.normalize("NFC", t) for t in texts]


def test_nfc_texts_matches_unicodedata_on_every_code_point():
    from llmforge.data.clean import nfc_texts

    # each code point alone, after a plain letter, before a combining mark, and between two letters
    points = [chr(c) for c in range(0x110000) if not 0xD800 <= c < 0xE000]
    for shape in ("{}", "a{}", "{}\u0301", "x{}y", "\u00e9{}"):
        texts = [shape.format(p) + "\u00e9" for p in points]  # + a non-ASCII letter: no text is ASCII
        assert nfc_texts(texts) == _nfc_each(texts), shape


def test_nfc_texts_matches_unicodedata_on_base_and_mark_pairs():
    import unicodedata

    from llmforge.data.clean import nfc_texts

    marks = [chr(c) for c in range(0x30000) if unicodedata.combining(chr(c))]
    marks += ["\u09be", "\u0b3e", "\u0bbe", "\u0cc2", "\u0d3e", "\u102e", "\u1161", "\u11a8", "\u3099"]  # ccc 0
    bases = [*"aeiouyAEIOUYcnszgkhwCNSZGKHW", "\u00e9", "\u0391", "\u03b1", "\u0415", "\u0438", "\u05d0", "\u0627",
             "\u0915", "\u09c7", "\u0b47", "\u0bc6", "\u0cc6", "\u0d46", "\u1025", "\u1100", "\uac00", "\u304b",
             "\u30ab", "\u00c5", "\u212b", "\u1ea1", "\u01b0", " ", "1"]  # fmt: skip
    texts = [f"{b}{m}{tail}" for b in bases for m in marks for tail in ("", "x", "\u0301", "\u0323", "\u00e9")]
    assert nfc_texts(texts) == _nfc_each(texts)


def test_nfc_texts_matches_unicodedata_on_random_strings():
    import random

    from llmforge.data.clean import nfc_texts

    rng = random.Random(11)
    alphabet = [*"aeoucAEOUC ,.\n\x00", "\u00e9", "\u00c5", "\u212b", "\u0301", "\u0308", "\u0323", "\u0327",
                "\u0344", "\u0340", "\u09c7", "\u09be", "\u1100", "\u1161", "\u11a8", "\uac00", "\u304b", "\u3099",
                "\uf900", "\u0958", "\u0f73", "\U0001d15e", "\U00030000", "\ud800", "\u6771", "\U0001f600",
                "\u03a9", "\u1e0b", "\u0307"]  # fmt: skip
    for _ in range(300):
        texts = ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(rng.randint(0, 40))]
        assert nfc_texts(texts) == [t if t.isascii() else n for t, n in zip(texts, _nfc_each(texts))]


def test_has_digit_is_the_digit_regex_on_long_texts():
    import re

    from llmforge.data.clean import has_digit

    digit = re.compile(r"\d")
    decimals = [chr(c) for c in range(0x110000) if chr(c).isdecimal()]
    pad = "plain words, no numbers \u00e9\u6771 " * 200  # long enough for the table
    for d in decimals:
        assert has_digit(pad + d) and has_digit(d + pad.encode("ascii", "ignore").decode())
    others = [chr(c) for c in range(0x30000) if not chr(c).isdecimal() and not 0xD800 <= c < 0xE000]
    for lo in range(0, len(others), 5000):
        text = pad + "".join(others[lo : lo + 5000])
        assert has_digit(text) == (digit.search(text) is not None) == False  # noqa: E712
    assert not has_digit(pad.encode("ascii", "ignore").decode())
    assert has_digit(pad.encode("ascii", "ignore").decode() + "7")
