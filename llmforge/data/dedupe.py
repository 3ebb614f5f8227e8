"""Duplicates: exact (hash of the normalized text) and near (MinHash signatures over word shingles, LSH banding).

Signatures come from datasketch's MinHash and are spilled to a file, so memory holds only the band hashes
(a few bytes per band and record). Banding and clustering are vectorized with numpy after the streaming pass;
candidate pairs are verified against their estimated Jaccard similarity, and clusters keep their first record.
"""

from __future__ import annotations

import hashlib
import zlib
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


class NearDuplicates:
    """Collects MinHash signatures record by record (spilled to `spill`), then clusters them in one go."""

    def __init__(self, spill: Path, threshold: float = 0.8, num_perm: int = 128, shingle: int = 3, seed: int = 1):
        self.threshold = threshold
        self.num_perm = num_perm
        self.shingle = shingle
        self.seed = seed
        self._hasher: MinHasher | None = None  # made on first use: signatures may come ready-made from workers
        self.spill = Path(spill)
        self._fh = open(self.spill, "wb")
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
        if not self._fh.closed:
            self._fh.close()

    def clusters(self) -> np.ndarray:
        """parent[i] = the first record of i's cluster (i itself for a record with no near duplicate before it)."""
        self.close()
        n = self.count
        parent = np.arange(n, dtype=np.int64)
        if n < 2:
            return parent
        bands, rows = optimal_bands(self.threshold, self.num_perm)
        rng = np.random.default_rng(12345)
        coef = rng.integers(1, 2**63 - 1, size=(bands, rows), dtype=np.uint64) | np.uint64(1)
        # Every band's hashes in one pass over the signatures, read a block at a time: a memory map of them would
        # keep every page it touched resident (num_perm * 4 bytes a record, 512 MB for a million).
        band_hashes = np.empty((bands, n), dtype=np.uint64)
        step = 65_536
        with open(self.spill, "rb") as fh:
            for lo in range(0, n, step):
                block = np.fromfile(fh, dtype=np.uint32, count=min(step, n - lo) * self.num_perm)
                block = block.reshape(-1, self.num_perm)
                for band in range(bands):
                    cols = np.asarray(block[:, band * rows : (band + 1) * rows], dtype=np.uint64)
                    with np.errstate(over="ignore"):
                        band_hashes[band, lo : lo + len(block)] = (cols * coef[band]).sum(axis=1, dtype=np.uint64)
        sig = np.memmap(self.spill, dtype=np.uint32, mode="r", shape=(n, self.num_perm))  # only candidates are read

        def find(i: int) -> int:
            root = i
            while parent[root] != root:
                root = int(parent[root])
            while parent[i] != root:  # path compression
                parent[i], i = root, int(parent[i])
            return root

        def similar(a: int, b: int) -> bool:
            return float(np.mean(sig[a] == sig[b])) >= self.threshold

        for band in range(bands):
            hashes = band_hashes[band]
            order = np.argsort(hashes, kind="stable")
            ordered = hashes[order]
            starts = np.flatnonzero(np.r_[True, ordered[1:] != ordered[:-1]])
            ends = np.r_[starts[1:], n]
            for lo, hi in zip(starts[ends - starts > 1], ends[ends - starts > 1]):
                members = order[lo:hi]  # ascending record order (stable sort)
                for k in range(1, len(members)):
                    b = int(members[k])
                    for a in members[: min(k, 8)]:
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
