"""Cleaning: Unicode NFC, whitespace normalization that leaves fenced code blocks intact, control characters,
and PII scrubbing (e-mail, URL, phone, IPv4, Luhn-checked card numbers) into typed placeholders.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from typing import Any

# C0 controls except tab/newline/carriage return, DEL, C1 controls, zero-width characters and stray BOMs.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200c\u200d\u2060\ufeff]")
_ODD_SPACE = re.compile(r"[\u00a0\u2000-\u200a\u202f\u205f\u3000]")
_LINE_SEP = re.compile(r"\r\n?|[\u2028\u2029\x85]")
_ODD_SPACE_OR_LINE_SEP = re.compile(r"[\u00a0\u2000-\u200a\u202f\u205f\u3000\r\u2028\u2029\x85]")
_CONTROL_OR_FENCE = re.compile(_CONTROL.pattern + "|```|~~~")
_BLANK_RUN = re.compile(r"\n{3,}")
_FENCE = re.compile(r"^[ \t]*(```|~~~).*?(?:^[ \t]*\1[^\n]*$|\Z)", re.MULTILINE | re.DOTALL)


def _tidy(prose: str) -> str:
    # Plain substring work, not `re.sub(r"[ \t]+$", "", prose, flags=re.M)`, whose engine tries a match at every
    # space: each round drops one blank before every newline (lines rarely end in more than one or two).
    while " \n" in prose or "\t\n" in prose:
        prose = prose.replace(" \n", "\n").replace("\t\n", "\n")
    if prose.endswith((" ", "\t")):
        prose = prose.rstrip(" \t")
    if "\n\n\n" in prose:
        prose = _BLANK_RUN.sub("\n\n", prose)
    return prose


def normalize_text(text: str) -> str:
    """NFC, one newline convention, no control characters, no trailing spaces or runs of blank lines outside
    fenced code blocks, no leading/trailing blank space. Indentation is kept (it may be code)."""
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
        if _ODD_SPACE_OR_LINE_SEP.search(text):  # one scan for the rare case of either
            text = _LINE_SEP.sub("\n", _ODD_SPACE.sub(" ", text))
    elif "\r" in text:
        text = _LINE_SEP.sub("\n", text)
    # One scan tells whether there is anything rare to do: control characters to remove or code fences to keep.
    fenced = False
    if _CONTROL_OR_FENCE.search(text):
        text = _CONTROL.sub("", text)
        fenced = "```" in text or "~~~" in text  # after the removal, which can join a fence
    if "\n" not in text:
        return text.strip()
    if fenced:
        pieces, last = [], 0
        for match in _FENCE.finditer(text):
            pieces.append(_tidy(text[last : match.start()]))
            pieces.append(match.group(0))  # code stays byte for byte
            last = match.end()
        pieces.append(_tidy(text[last:]))
        text = "".join(pieces)
    else:
        text = _tidy(text)
    text = text.strip("\n").rstrip()
    if "\n" not in text:  # down to one line: the same rule as text that came as one line, so that f(f(x)) == f(x)
        return text.strip()
    if text[:1] in (" ", "\t") and not text.startswith(("    ", "\t")):
        text = text.lstrip(" \t")
    return text


# Anything normalize_text would remove or rewrite besides trailing blanks and blank-line runs (NUL aside: it is the
# separator below, counted separately). \x85 is inside \x7f-\x9f.
_RARE = re.compile(
    r"[\x01-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200b\u200c\u200d\u2060\ufeff\r\u00a0\u2000-\u200a\u202f\u205f\u3000"
    r"\u2028\u2029]"
)
_SEP = "\x00"
_BATCH = 256


def normalize_texts(texts: list[str]) -> list[str]:
    """[normalize_text(t) for t in texts], with the work done once over all of them joined by NUL.

    Every step but NFC is local to a line and never crosses a character that is not blank, so doing it over the
    joined texts gives the same pieces. Per text, Python-level steps cost more than the scanning, so a batch of 8
    texts or more is done in numpy over its code points (NFC, odd spaces and line separators, blanks before line
    ends, blank-line runs), and only the ends of each text are trimmed one by one; texts with control characters or
    code fences go through normalize_text one by one. Fewer texts, or a text holding NUL (the separator), are joined
    as strings, and there odd spaces and carriage returns send a text to normalize_text too."""
    if len(texts) > _BATCH:  # in batches that stay in the processor's cache (the joined text is copied a few times)
        return [out for lo in range(0, len(texts), _BATCH) for out in normalize_texts(texts[lo : lo + _BATCH])]
    if not texts:
        return []
    joined = _SEP.join(texts)
    if len(texts) >= 8 and joined.count(_SEP) == len(texts) - 1:
        import numpy as np

        codes, kinds = _codes(joined)
        special: set[int] = set()
        rewrite = False
        if (kinds >= _RARE_PLAIN).any():
            flags = kinds & (_RARE_PLAIN | _REWRITE)
            at = np.flatnonzero(flags & _RARE_PLAIN)  # the texts a rare character is in
            special.update(np.searchsorted(np.flatnonzero(codes == 0), at).tolist())
            rewrite = bool((flags & _REWRITE).any())
        if "```" in joined or "~~~" in joined:
            special.update(i for i, t in enumerate(texts) if "```" in t or "~~~" in t)
        if not special:
            codes = _nfc_codes(codes, kinds, texts)
            if rewrite:
                codes = _rewrite_codes(codes)
            pieces = _from_codes(_tidy_codes(codes)).split(_SEP)
            return [p.strip() if "\n" not in p else _ends(p) for p in pieces]
        kept = iter(normalize_texts([t for i, t in enumerate(texts) if i not in special]))
        return [normalize_text(t) if i in special else next(kept) for i, t in enumerate(texts)]
    # a few texts, or one holding NUL: the texts joined as strings
    texts = nfc_texts(texts)
    joined = _SEP.join(texts)
    special = set()
    if joined.count(_SEP) != len(texts) - 1 or _RARE.search(joined) or "```" in joined or "~~~" in joined:
        special = {i for i, t in enumerate(texts) if _SEP in t or _RARE.search(t) or "```" in t or "~~~" in t}
        joined = _SEP.join(t for i, t in enumerate(texts) if i not in special)
    while " \n" in joined or "\t\n" in joined:
        joined = joined.replace(" \n", "\n").replace("\t\n", "\n")
    if "\n\n\n" in joined:
        joined = _BLANK_RUN.sub("\n\n", joined)
    pieces = joined.split(_SEP)
    # normalize_text's ending, for a text already tidied (its own final rstrip(" \t") is covered by rstrip())
    out = [p.strip() if "\n" not in p else _ends(p) for p in pieces]
    if special:
        kept = iter(out)
        out = [normalize_text(t) if i in special else next(kept) for i, t in enumerate(texts)]
    return out


# normalize_text's rewrites after NFC: odd spaces become a space; a carriage return (with the newline after it, if
# any) and the other line separators a newline
_ODD_SPACES = [0xA0, *range(0x2000, 0x200B), 0x202F, 0x205F, 0x3000]
_LINE_SEPARATORS = [0x2028, 0x2029, 0x85]


def _rewrite_codes(codes: Any) -> Any:
    import numpy as np

    codes = codes.copy()
    returns = np.flatnonzero(codes == 13)
    crlf = returns[codes[np.minimum(returns + 1, len(codes) - 1)] == 10]  # "\r\n" (a newline, not a separator)
    codes[returns] = 10
    if codes.itemsize > 1:
        codes[np.isin(codes, _ODD_SPACES)] = 32
        codes[np.isin(codes, _LINE_SEPARATORS)] = 10
    if len(crlf):  # "\r\n": the "\r" goes
        keep = np.ones(len(codes), dtype=bool)
        keep[crlf] = False
        codes = codes[keep]
    return codes


def _tidy_codes(codes: Any) -> Any:
    """_tidy's blanks-before-newline and blank-line runs, over the code points of texts joined by NUL (no fences)."""
    import numpy as np

    newlines = np.flatnonzero(codes == 10)
    drops = []
    at, step = newlines, 1
    while len(at):  # walk back from each newline over the spaces and tabs before it
        before = at - step
        char = codes[np.maximum(before, 0)]
        blank = (before >= 0) & ((char == 32) | (char == 9))
        at = at[blank]
        if len(at):
            drops.append(before[blank])
        step += 1
    if drops:
        keep = np.ones(len(codes), dtype=bool)
        keep[np.concatenate(drops)] = False
        codes = codes[keep]
        newlines = np.flatnonzero(codes == 10)
    third = newlines[2:][newlines[2:] - newlines[:-2] == 2]  # the third newline in a row and any after it
    if len(third):
        keep = np.ones(len(codes), dtype=bool)
        keep[third] = False
        codes = codes[keep]
    return codes


# --- NFC, many texts at once ---------------------------------------------------------------------------------------
#
# unicodedata.normalize("NFC", t) decomposes and recomposes the whole text whenever anything in it may change, ~40 ns a
# character: on chat data with decomposed accents ("cafe" + U+0301) that is a third of the per-record work. Almost all
# of those texts need one thing only: a base letter and the one combining mark after it made into the precomposed
# letter. nfc_texts does that in numpy over many texts at once and hands every other case to unicodedata.
#
# Each code point has a class (below 0x30000; everything above is _COMPLEX: CJK extensions, tags and private use,
# rare enough to leave to unicodedata):
#   _PLAIN    ccc 0, no canonical decomposition, never the second of a composition: NFC leaves it, and nothing
#             before it can combine with it or move past it
#   _PRECOMP  like _PLAIN but with a canonical decomposition of its own (precomposed letters, Hangul syllables): a
#             mark after one may recombine differently, so such a text goes to unicodedata
#   _MARK     a combining mark (ccc > 0) or the second of some composition, itself without a decomposition
#   _COMPLEX  anything NFC changes on its own (singletons, exclusions, non-starter decompositions) and Hangul jamo
# A _MARK between a _PLAIN and a code point that is not a _MARK is composed with the _PLAIN when the two make a primary
# composite (what NFC of the pair gives), and otherwise left as it is; any other _MARK or _COMPLEX sends its text to
# unicodedata. tests/unit/test_data_clean.py checks this against unicodedata on every code point, every base + mark
# pair of many bases, random strings and the benchmark's data.
_PLAIN, _PRECOMP, _MARK, _COMPLEX = 0, 1, 2, 3
_KIND = 3  # the class's bits; above them, flags for normalize_texts:
_RARE_PLAIN = 4  # a character of _RARE that its text goes to normalize_text for (control characters, zero widths)
_REWRITE = 8  # one of _RARE that becomes a space or a newline (odd spaces, carriage returns, line separators)
_TABLE_END = 0x30000
_nfc_tables: tuple[Any, Any, Any] | None = None


def _build_nfc_tables() -> tuple[Any, Any, Any]:
    import numpy as np

    kind = np.zeros(_TABLE_END + 1, dtype=np.uint8)
    kind[_TABLE_END] = _COMPLEX
    combining, decomposition, normalize = unicodedata.combining, unicodedata.decomposition, unicodedata.normalize
    pairs: dict[int, int] = {}
    seconds: list[int] = []
    for code in range(_TABLE_END):
        char = chr(code)
        mapping = decomposition(char)
        if mapping and not mapping.startswith("<"):  # a canonical decomposition
            if normalize("NFC", char) != char:
                kind[code] = _COMPLEX
                continue
            kind[code] = _PRECOMP
            parts = mapping.split()
            if len(parts) == 2:
                first, second = int(parts[0], 16), int(parts[1], 16)
                if normalize("NFC", chr(first) + chr(second)) == char:  # a primary composite
                    pairs[first << 21 | second] = code
                    seconds.append(second)
        if combining(char) and kind[code] == _PLAIN:
            kind[code] = _MARK
    for second in seconds:
        if kind[second] == _PLAIN:
            kind[second] = _MARK
        elif kind[second] == _PRECOMP:
            kind[second] = _COMPLEX
    kind[0x1100:0x1200] = _COMPLEX  # Hangul jamo: composed by rule, not by the decomposition data
    kind[0xA960:0xA980] = _COMPLEX
    kind[0xD7B0:0xD800] = _COMPLEX
    kind[0xAC00:0xD7A4] = _PRECOMP  # Hangul syllables
    # flagged on top of their class: the characters normalize_texts leaves to normalize_text, and the odd spaces and
    # line separators it rewrites itself
    for code in range(0x10000):
        if _RARE.match(chr(code)):
            kind[code] |= _REWRITE if _ODD_SPACE_OR_LINE_SEP.match(chr(code)) else _RARE_PLAIN
    keys = np.array(sorted(pairs), dtype=np.uint64)
    values = np.array([pairs[k] for k in sorted(pairs)], dtype=np.uint32)
    return kind, keys, values


def nfc_texts(texts: list[str]) -> list[str]:
    """[unicodedata.normalize("NFC", t) for t in texts] (an ASCII text as it is), the common cases vectorized."""
    joined = _SEP.join(texts)
    if joined.isascii():
        return list(texts)
    if len(texts) < 8 or joined.count(_SEP) != len(texts) - 1:  # a few texts, or one holding the separator
        nfc = unicodedata.normalize
        return [t if t.isascii() else nfc("NFC", t) for t in texts]
    return _from_codes(_nfc_codes(*_codes(joined), texts)).split(_SEP)


def _as_codes(joined: str) -> Any:
    import numpy as np

    if joined.isascii():
        return np.frombuffer(joined.encode("ascii"), dtype=np.uint8)
    return np.frombuffer(joined.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


def _from_codes(codes: Any) -> str:
    if codes.itemsize == 1:
        return codes.tobytes().decode("ascii")
    return codes.tobytes().decode("utf-32-le", "surrogatepass")


def _codes(joined: str) -> tuple[Any, Any]:
    """The code points of `joined` (numpy: uint8 for ASCII, uint32 otherwise), and each one's NFC class, with
    _RARE_PLAIN or _REWRITE added for a character of _RARE."""
    global _nfc_tables
    if _nfc_tables is None:
        _nfc_tables = _build_nfc_tables()
    codes = _as_codes(joined)
    return codes, _nfc_tables[0].take(codes, mode="clip")  # from _TABLE_END up: the last entry, _COMPLEX


def _nfc_codes(codes: Any, kinds: Any, texts: list[str]) -> Any:
    """The code points of NUL.join(NFC of each text), given those of NUL.join(texts) and their classes (_codes); no
    text holds a NUL."""
    import numpy as np

    if codes.itemsize == 1:  # ASCII: NFC leaves it
        return codes
    _, keys, values = _nfc_tables
    marks = np.flatnonzero((kinds & _KIND) >= _MARK)
    if not len(marks):
        return codes
    kinds = kinds & _KIND
    before = np.where(marks > 0, marks - 1, 0)
    # a _MARK right after a _PLAIN (the first code point of all has nothing before it: a NUL stands in)
    simple = (kinds[marks] == _MARK) & ((kinds[before] == _PLAIN) | (marks == 0))
    simple[1:] &= marks[1:] != marks[:-1] + 1  # not the second of two marks in a row
    simple[:-1] &= marks[:-1] + 1 != marks[1:]  # nor the first
    hard: list[int] = []
    if not simple.all():  # the texts unicodedata takes
        hard = np.unique(np.searchsorted(np.flatnonzero(codes == 0), marks[~simple])).tolist()
        marks, before = marks[simple], before[simple]
    wanted = np.where(marks > 0, codes[before].astype(np.uint64), 0) << np.uint64(21) | codes[marks].astype(np.uint64)
    at = np.minimum(np.searchsorted(keys, wanted), len(keys) - 1)
    found = keys[at] == wanted
    if found.any():
        codes = codes.copy()
        codes[before[found]] = values[at[found]]
        keep = np.ones(len(codes), dtype=bool)
        keep[marks[found]] = False
        codes = codes[keep]
    if hard:
        done = _from_codes(codes).split(_SEP)
        nfc = unicodedata.normalize
        for k in hard:
            done[k] = nfc("NFC", texts[k])
        codes = _as_codes(_SEP.join(done))
    return codes


def _ends(text: str) -> str:
    text = text.strip("\n").rstrip()
    if "\n" not in text:
        return text.strip()
    if text[:1] in (" ", "\t") and not text.startswith(("    ", "\t")):
        text = text.lstrip(" \t")
    return text


# --- PII -------------------------------------------------------------------------------------------------------

PLACEHOLDERS = {"email": "<EMAIL>", "url": "<URL>", "phone": "<PHONE>", "ip": "<IP>", "card": "<CARD>"}

_URL = re.compile(r"\b(?:https?://|ftp://|www\.)[^\s<>\"'`]+", re.IGNORECASE)
_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
# Exactly four octets: "3.10.12" (three parts) and "1.2.3.4.5" (five) are not addresses.
_IPV4 = re.compile(rf"(?<![\w.]){_OCTET}(?:\.{_OCTET}){{3}}(?![\w]|\.\d)")
_VERSION_CONTEXT = re.compile(r"(?:\bv|version|release|python|release|build|\bver\.?)\s*$", re.IGNORECASE)
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])")
_PHONE = re.compile(
    r"(?<![\w+./-])(?:\+\d{1,3}[ .-]?)?(?:\(\d{1,4}\)[ .-]?)?\d{2,4}(?:[ .-]\d{2,4}){1,4}(?![\w/-]|\.\d)"
    r"|(?<![\w+])\+\d{8,15}\b"
)
_DATE = re.compile(r"^(?:\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4})$")
_TIME = re.compile(r"^\d{1,2}[.:]\d{2}(?:[.:]\d{2})?$")
_DIGIT = re.compile(r"\d")
_URL_TRAILING = ".,;:!?)]}'\""


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, char in enumerate(reversed(digits)):
        d = ord(char) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _is_phone(candidate: str) -> bool:
    digits = sum(c.isdigit() for c in candidate)
    if not 7 <= digits <= 15:
        return False
    if _DATE.match(candidate) or _TIME.match(candidate):
        return False
    has_prefix = candidate.startswith(("+", "("))
    groups = re.split(r"[ .()-]+", candidate.strip("+()"))
    groups = [g for g in groups if g]
    separators = set(re.findall(r"[ .-]", candidate))
    if not has_prefix:
        if separators == {"."} and len(groups) <= 3:  # 1.234.567 or a version number
            return False
        if len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:]) and separators <= {" ", ","}:
            return False  # "1 000 000": thousands, not a phone number
        if len(groups) < 2:
            return False
    return True


_digits: Any = None  # has_digit's table: 1 where str.isdecimal (what the regexes' \d matches), below 0x20000


def has_digit(text: str) -> bool:
    """_DIGIT.search(text) is not None. The regex spends ~7 ns a character on this; a long text is looked up in a
    table with numpy instead (no decimal digit lies above U+1FFFF: the table's last entry stands for all of those,
    and says yes, leaving them to the regex)."""
    if len(text) < 4096:
        return _DIGIT.search(text) is not None
    import numpy as np

    global _digits
    if _digits is None:
        table = np.zeros(0x20001, dtype=bool)
        table[[code for code in range(0x20000) if chr(code).isdecimal()]] = True
        table[0x20000] = True
        _digits = table
    if not _digits.take(_as_codes(text), mode="clip").any():
        return False
    return _DIGIT.search(text) is not None


class PiiScrubber:
    """Replaces the enabled kinds of PII with placeholders and counts what it replaced."""

    def __init__(self, email: bool = True, url: bool = True, phone: bool = True, ip: bool = True, card: bool = True):
        self.enabled = {"email": email, "url": url, "phone": phone, "ip": ip, "card": card}
        self.counts: Counter[str] = Counter()

    @property
    def active(self) -> bool:
        return any(self.enabled.values())

    @staticmethod
    def may_change(text: str) -> bool:
        """Whether `text` gets past the first checks of __call__ (no digit, @, :// or www.: nothing to replace).
        Asked of many texts joined together, it tells whether any of them needs scrubbing."""
        return "@" in text or "://" in text or "www." in text or "WWW." in text or has_digit(text)

    def __call__(self, text: str) -> str:
        on = self.enabled
        if on["url"] and ("://" in text or "www." in text or "WWW." in text):
            text = _URL.sub(self._url, text)
        if on["email"] and "@" in text:
            text, n = _EMAIL.subn(PLACEHOLDERS["email"], text)
            self.counts["email"] += n
        if _DIGIT.search(text) is None:
            return text
        if on["card"]:
            text = _CARD.sub(self._card, text)
        if on["ip"] and "." in text:
            text = _IPV4.sub(self._ip, text)
        if on["phone"]:
            text = _PHONE.sub(self._phone, text)
        return text

    def scrub_value(self, value: Any) -> Any:
        """`value` (a record as read: JSON, CSV or parquet values) with every string scrubbed, keys included.
        Other values that are not numbers become their text first, as they would when written as JSON."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self.scrub_value(k): self.scrub_value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.scrub_value(v) for v in value]
        if value is None or isinstance(value, (bool, int, float)):
            return value
        return self(str(value))

    def _url(self, match: re.Match) -> str:
        url = match.group(0)
        stripped = url.rstrip(_URL_TRAILING)
        # keep a closing bracket that closes an opening one inside the URL
        while len(stripped) < len(url) and url[len(stripped)] == ")" and stripped.count("(") > stripped.count(")"):
            stripped += ")"
        self.counts["url"] += 1
        return PLACEHOLDERS["url"] + url[len(stripped) :]

    def _card(self, match: re.Match) -> str:
        raw = match.group(0)
        digits = raw.replace(" ", "").replace("-", "")
        if 13 <= len(digits) <= 19 and luhn_ok(digits):
            self.counts["card"] += 1
            return PLACEHOLDERS["card"]
        return raw

    def _ip(self, match: re.Match) -> str:
        before = match.string[max(0, match.start() - 12) : match.start()]
        if _VERSION_CONTEXT.search(before):
            return match.group(0)
        self.counts["ip"] += 1
        return PLACEHOLDERS["ip"]

    def _phone(self, match: re.Match) -> str:
        candidate = match.group(0)
        if _is_phone(candidate):
            self.counts["phone"] += 1
            return PLACEHOLDERS["phone"]
        return candidate
