"""Duplicates: exact (hash of the normalized text) and near (MinHash signatures over word shingles, LSH banding).

Signatures come from datasketch's MinHash and are spilled to a file, so memory holds only the band hashes
(a few bytes per band and record). Banding and clustering are vectorized with numpy after the streaming pass;
candidate pairs are verified against their estimated Jaccard similarity, and clusters keep their first record.
"""

from __future__ import annotations

import hashlib
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from itertools import chain
from pathlib import Path

import numpy as np

SHINGLES_PER_BATCH = 8192


def words(text: str) -> list[str]:
    """The text's words in lower case: what exact keys and shingles are made of (split once, used by both)."""
    return text.lower().split()


def exact_key(text: str, split: list[str] | None = None) -> int:
    """64-bit hash of the text with case and whitespace differences removed (`split`: its `words`, if at hand)."""
    joined = " ".join(words(text) if split is None else split)
    return int.from_bytes(hashlib.blake2b(joined.encode(), digest_size=8).digest(), "little")


def encoded_words(text: str) -> list[bytes]:
    """[w.encode() for w in words(text)], from one encode and a split of the bytes.

    bytes.split() breaks at ASCII blanks only, str.split() at every Unicode blank as well. Normalized text (clean.
    normalize_text, which every record's content has been through) keeps no blank but space, tab, newline and U+1680
    (the others are removed or become a space or a newline), so only U+1680 needs the slower way."""
    low = text.lower()
    if "\u1680" in low:
        return [word.encode() for word in low.split()]
    return low.encode().split()


# bytes.split()'s blanks, each made a space
_BLANKS_TO_SPACE = bytes.maketrans(b"\t\n\r\x0b\x0c", b"     ")


def joined_words(texts: list[str]) -> list[bytes]:
    """[b" ".join(encoded_words(t)) for t in texts] (what exact keys hash), texts being normalized ones (see
    encoded_words).

    Splitting every text into words makes an object per word; instead all texts are lowered and encoded at once,
    joined by NUL, and numpy collapses each run of blanks to the one space the words' join would put there. NUL
    cannot be in a normalized text, and to str.lower it is neither cased nor case-ignorable, so a final sigma is
    lowered as at the end of its own text. A few texts, or a text holding NUL after all, go one by one."""
    joined = "\x00".join(texts)
    if len(texts) < 8 or joined.count("\x00") != len(texts) - 1:
        return [b" ".join(encoded_words(text)) for text in texts]
    joined = joined.lower()
    if "\u1680" in joined:  # the one blank of normalized text that bytes.split does not know: made a space
        joined = joined.replace("\u1680", " ")
    data = np.frombuffer(joined.encode().translate(_BLANKS_TO_SPACE), dtype=np.uint8)
    space = data == 32
    run = space[:-1] & space[1:]  # a space followed by another: all but the last of each run go
    if run.any():
        keep = np.ones(len(data), dtype=bool)
        keep[:-1] = ~run
        data = data[keep]
    # what is left of a run at either end of a text is its one space there, which strip removes
    return [piece.strip(b" ") for piece in data.tobytes().split(b"\x00")]


def exact_digests(joined: list[bytes]) -> list[bytes]:
    """The 8-byte digest behind each text's exact_key (exact_key reads it as a little-endian int), given the texts'
    joined_words."""
    blake2b = hashlib.blake2b
    return [blake2b(piece, digest_size=8).digest() for piece in joined]


def shingles(text: str, size: int, split: list[str] | None = None) -> list[bytes]:
    """Every run of `size` consecutive words, space-joined, UTF-8; a text of `size` words or fewer is one shingle."""
    found = words(text) if split is None else split
    if len(found) <= size:
        return [" ".join(found).encode()]
    # Words encoded once and joined as bytes, by zipping shifted lists (UTF-8 of a join is the join of the UTF-8s):
    # a third of the cost of slicing and encoding every shingle.
    encoded = [word.encode() for word in found]
    if size == 1:
        return encoded
    return [b" ".join(run) for run in zip(*(encoded[k:] for k in range(size)))]


def optimal_bands(threshold: float, num_perm: int, fp_weight: float = 0.2) -> tuple[int, int]:
    """(bands, rows) minimizing weighted false positives + false negatives around `threshold`. Candidates are
    verified against their signatures afterwards, so a false positive costs only a comparison: weigh misses more."""

    def integral(f, lo: float, hi: float, steps: int = 200) -> float:
        width = (hi - lo) / steps
        return sum(f(lo + (i + 0.5) * width) for i in range(steps)) * width

    best, best_cost = (1, num_perm), float("inf")
    for b in range(1, num_perm + 1):
        for r in range(1, num_perm // b + 1):
            fp = integral(lambda s, b=b, r=r: 1 - (1 - s**r) ** b, 0.0, threshold)
            fn = integral(lambda s, b=b, r=r: (1 - s**r) ** b, threshold, 1.0)
            cost = fp_weight * fp + (1 - fp_weight) * fn
            if cost < best_cost:
                best, best_cost = (b, r), cost
    return best


class MinHasher:
    """MinHash signatures of texts, one object reused for every record (no re-setup per record)."""

    def __init__(self, num_perm: int = 128, shingle: int = 3, seed: int = 1):
        from datasketch import MinHash

        self.shingle = shingle
        # Shingles are hashed with CRC32 rather than datasketch's default SHA-1: 1.6x faster per record, and
        # datasketch (>= 2.0) runs every input hash through a murmur3 finalizer before its affine permutations, so
        # the checksum's linearity does not reach the signatures.
        self._minhash = MinHash(num_perm=num_perm, seed=seed, hashfunc=zlib.crc32)
        if self._minhash.scheme != "affine32":  # what `signatures` computes itself
            raise RuntimeError(f"datasketch's MinHash uses the {self._minhash.scheme} scheme; expected affine32")
        a, b = self._minhash.permutations
        self._permutations = (np.asarray(a, dtype=np.uint32), np.asarray(b, dtype=np.uint32))

    def signature(self, text: str, split: list[str] | None = None) -> bytes:
        """num_perm uint32 values, native byte order (`split`: the text's `words`, if at hand)."""
        m = self._minhash
        m.clear()
        # In slices: update_batch builds a (shingles x num_perm) array, 1 KB per shingle, and a long record has
        # millions of shingles. The signature is a running minimum, so slicing leaves it unchanged.
        found = shingles(text, self.shingle, split)
        for lo in range(0, len(found), SHINGLES_PER_BATCH):
            m.update_batch(found[lo : lo + SHINGLES_PER_BATCH])
        return np.asarray(m.hashvalues, dtype=np.uint32).tobytes()

    def signatures(self, encoded: list[list[bytes]]) -> bytes:
        """signature() of many texts at once, given their encoded_words: the same bytes, one after another.

        datasketch's affine32 scheme, in numpy over every shingle of the batch: each shingle's CRC32 through the
        murmur3 finalizer, then a * h + b (mod 2**32) for each permutation (a, b) and the minimum per text.
        test_data_prepare checks the result against datasketch's own MinHash."""
        size = self.shingle
        crc, join = zlib.crc32, b" ".join
        counts = np.fromiter((len(w) - size + 1 if len(w) > size else 1 for w in encoded), np.int64, len(encoded))
        runs = (
            (join(w),) if len(w) <= size else w if size == 1 else map(join, zip(*(w[k:] for k in range(size))))
            for w in encoded
        )
        hashes = np.fromiter(map(crc, chain.from_iterable(runs)), np.uint32, int(counts.sum()))
        hashes ^= hashes >> np.uint32(16)  # murmur3's 32-bit finalizer (datasketch's _fmix)
        hashes *= np.uint32(0x85EBCA6B)
        hashes ^= hashes >> np.uint32(13)
        hashes *= np.uint32(0xC2B2AE35)
        hashes ^= hashes >> np.uint32(16)
        a, b = self._permutations
        out = np.full((len(a), len(encoded)), np.uint32(0xFFFFFFFF), dtype=np.uint32)
        starts = np.cumsum(counts) - counts
        # A slice of shingles at a time, permutations by shingles (the minimum runs along rows: numpy reduces a row
        # many times faster than a column); a text may straddle slices.
        step = SHINGLES_PER_BATCH // 2
        b = b[:, None]
        for lo in range(0, len(hashes), step):
            hi = min(lo + step, len(hashes))
            first, last = np.searchsorted(starts, [lo, hi - 1], side="right") - 1  # the texts the slice touches
            texts = np.arange(first, last + 1)
            cuts = np.maximum(starts[first : last + 1], lo) - lo
            block = np.multiply.outer(a, hashes[lo:hi])
            block += b
            out[:, texts] = np.minimum(out[:, texts], np.minimum.reduceat(block, cuts, axis=1))
        return out.T.tobytes()


class NearDuplicates:
    """Collects MinHash signatures record by record (spilled to `spill`), then clusters them in one go.
    `spilled`: the caller writes the signatures to `spill` itself (num_perm uint32 values a record, in order)."""

    def __init__(
        self,
        spill: Path,
        threshold: float = 0.8,
        num_perm: int = 128,
        shingle: int = 3,
        seed: int = 1,
        *,
        spilled: bool = False,
    ):
        self.threshold = threshold
        self.num_perm = num_perm
        self.shingle = shingle
        self.seed = seed
        self._hasher: MinHasher | None = None  # made on first use: signatures may come ready-made from workers
        self.spill = Path(spill)
        self._fh = None if spilled else open(self.spill, "wb")
        self.count = 0

    def add(self, text: str) -> None:
        if self._hasher is None:
            self._hasher = MinHasher(self.num_perm, self.shingle, self.seed)
        self.add_signatures(self._hasher.signature(text))

    def add_signatures(self, signatures) -> None:
        """Signatures made by a MinHasher of the same num_perm, shingle and seed, one after another."""
        self._fh.write(signatures)
        self.count += len(signatures) // (4 * self.num_perm)

    def close(self) -> None:
        if self._fh is not None and not self._fh.closed:
            self._fh.close()

    def clusters(self, rows: np.ndarray | None = None) -> np.ndarray:
        """parent[i] = the first record of i's cluster (i itself for a record with no near duplicate before it).
        `rows`: cluster only these records of the spill file (ascending), i then counting among them."""
        self.close()
        total = self.count if self._fh is not None else self.spill.stat().st_size // (4 * self.num_perm)
        n = total if rows is None else len(rows)
        parent = np.arange(n, dtype=np.int64)
        if n < 2:
            return parent
        bands, rows_per_band = optimal_bands(self.threshold, self.num_perm)
        rng = np.random.default_rng(12345)
        coef = rng.integers(1, 2**63 - 1, size=(bands, rows_per_band), dtype=np.uint64) | np.uint64(1)
        band_hashes = np.empty((bands, n), dtype=np.uint64)

        def hash_bands(block: np.ndarray, at: int, end: int) -> None:
            for band in range(bands):
                cols = np.asarray(block[:, band * rows_per_band : (band + 1) * rows_per_band], dtype=np.uint64)
                with np.errstate(over="ignore"):
                    band_hashes[band, at:end] = (cols * coef[band]).sum(axis=1, dtype=np.uint64)

        def candidates(band: int) -> tuple[np.ndarray, np.ndarray]:
            """The band's buckets of two records or more: their sizes, and their records (each bucket's ascending)."""
            hashes = band_hashes[band]
            order = np.argsort(hashes, kind="stable")
            ordered = hashes[order]
            starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
            sizes = np.diff(np.r_[starts, n])
            many = sizes > 1
            members = order[np.repeat(many, sizes)]
            return sizes[many], members

        # numpy lets go of the GIL in its sums and sorts: band hashes a block at a time and each band's sort run on
        # the process's cores (the union-find below stays in one thread, in band order, as before)
        threads = ThreadPoolExecutor(max(1, min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                                else os.cpu_count() or 1)), thread_name_prefix="llmforge-near")  # fmt: skip
        with threads:
            # Every band's hashes in one pass over the signatures, read a block at a time: a memory map of them would
            # keep every page it touched resident (num_perm * 4 bytes a record, 512 MB for a million).
            step = 65_536
            hashing = []
            with open(self.spill, "rb") as fh:
                for lo in range(0, total, step):
                    block = np.fromfile(fh, dtype=np.uint32, count=min(step, total - lo) * self.num_perm)
                    block = block.reshape(-1, self.num_perm)
                    at, end = lo, lo + len(block)  # where the block's records go among the n clustered
                    if rows is not None:
                        at, end = np.searchsorted(rows, [lo, lo + len(block)])
                        block = block[rows[at:end] - lo]
                    hashing.append(threads.submit(hash_bands, block, at, end))
                    if len(hashing) > 1:  # at most two blocks in memory: one hashed, one read
                        hashing.pop(0).result()
            for job in hashing:
                job.result()
            buckets = list(threads.map(candidates, range(bands)))
        sig = np.memmap(self.spill, dtype=np.uint32, mode="r", shape=(total, self.num_perm))  # only candidates are read

        def signature(i: int) -> np.ndarray:
            return sig[i if rows is None else rows[i]]

        def find(i: int) -> int:
            root = i
            while parent[root] != root:
                root = int(parent[root])
            while parent[i] != root:  # path compression
                parent[i], i = root, int(parent[i])
            return root

        def similar(a: int, b: int) -> bool:
            return float(np.mean(signature(a) == signature(b))) >= self.threshold

        for sizes, members in buckets:
            at = 0
            for size in sizes.tolist():
                group = members[at : at + size]  # ascending record order (stable sort)
                at += size
                for k in range(1, size):
                    b = int(group[k])
                    for a in group[: min(k, 8)]:
                        a = int(a)
                        ra, rb = find(a), find(b)
                        if ra == rb:
                            break
                        if similar(a, b):
                            parent[max(ra, rb)] = min(ra, rb)
                            break
        while True:  # point every record straight at its cluster's first record
            jumped = parent[parent]
            if np.array_equal(jumped, parent):
                break
            parent = jumped

        return parent
