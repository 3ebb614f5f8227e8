"""Read safetensors one tensor at a time into numpy, bf16 included, without torch.

safetensors' own numpy loader refuses bf16, and torch would add hundreds of MB to the converter's RSS.
The format is a little-endian u64 header length, a JSON header {name: {dtype, shape, data_offsets}}, then the
bytes; we validate the header against the file size up front so a truncated download fails before any writing.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

from llmforge.errors import InputError

_DTYPES = {  # safetensors dtype -> (numpy dtype name, bytes per element)
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("uint16", 2),  # widened to float32 by shifting into the high half
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # safetensors spelling: F32, BF16 ...
    shape: tuple[int, ...]
    file: Path
    offset: int  # absolute byte offset in file
    nbytes: int


def read_header(path: Path) -> list[TensorEntry]:
    """Tensor entries of one .safetensors file, checked against its size."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise InputError(f"{path}: not a safetensors file (only {size} bytes)", hint="re-save or re-download it")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100 * 2**20:
            raise InputError(f"{path}: corrupt safetensors header (claims {n} bytes)", hint="re-save or re-download it")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise InputError(f"{path}: corrupt safetensors header: {e}", hint="re-save or re-download it") from None
    data_start = 8 + n
    entries = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = info.get("dtype")
        if dtype not in _DTYPES:
            raise InputError(f"{path}: tensor {name}: unsupported dtype {dtype}", hint="save the model in f32/f16/bf16")
        begin, end = info["data_offsets"]
        shape = tuple(int(d) for d in info["shape"])
        count = 1
        for d in shape:
            count *= d
        if end - begin != count * _DTYPES[dtype][1]:
            raise InputError(f"{path}: tensor {name}: size does not match its shape {shape}", hint="re-save the model")
        if data_start + end > size:
            raise InputError(
                f"{path}: truncated: tensor {name} ends at byte {data_start + end} but the file has {size}",
                hint="the file is incomplete; re-save or re-download it",
            )
        entries.append(TensorEntry(name, dtype, shape, path, data_start + begin, end - begin))
    return entries


def model_tensors(model_dir: Path) -> dict[str, TensorEntry]:
    """Every tensor of a HF model folder (single file or sharded), by name."""
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        extra = " (found PyTorch .bin weights: re-save with safe_serialization=True)" if any(
            model_dir.glob("*.bin")) else ""
        raise InputError(f"{model_dir}: no .safetensors weights{extra}", hint="point at a saved HF model folder")
    out: dict[str, TensorEntry] = {}
    for f in files:
        for e in read_header(f):
            out[e.name] = e
    return out


def load(entry: TensorEntry, as_float32: bool = True):
    """One tensor as a numpy array (float types widened to float32 unless as_float32 is False)."""
    import numpy as np

    np_dtype, _ = _DTYPES[entry.dtype]
    count = entry.nbytes // _DTYPES[entry.dtype][1]
    with open(entry.file, "rb") as f:
        f.seek(entry.offset)
        arr = np.fromfile(f, dtype=np.dtype(np_dtype).newbyteorder("<"), count=count)
    if arr.size != count:
        raise InputError(f"{entry.file}: truncated while reading tensor {entry.name}", hint="re-save the model")
    arr = arr.reshape(entry.shape)
    if entry.dtype == "BF16":
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    elif as_float32 and arr.dtype.kind == "f" and arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    return arr


def iter_rows(entry: TensorEntry, max_bytes: int = 16 * 2**20):
    """A tensor as float32 blocks of whole rows (first axis), each about max_bytes once widened, so converting a
    large embedding never holds it whole in several dtypes at once."""
    import numpy as np

    if len(entry.shape) < 2:
        yield load(entry)
        return
    rows = entry.shape[0]
    row_items = entry.nbytes // _DTYPES[entry.dtype][1] // rows
    step = max(1, max_bytes // (row_items * 4))
    np_dtype = np.dtype(_DTYPES[entry.dtype][0]).newbyteorder("<")
    item = _DTYPES[entry.dtype][1]
    with open(entry.file, "rb") as f:
        for start in range(0, rows, step):
            n = min(step, rows - start)
            f.seek(entry.offset + start * row_items * item)
            arr = np.fromfile(f, dtype=np_dtype, count=n * row_items)
            if arr.size != n * row_items:
                raise InputError(f"{entry.file}: truncated while reading tensor {entry.name}", hint="re-save the model")
            arr = arr.reshape((n, *entry.shape[1:]))
            if entry.dtype == "BF16":
                arr = (arr.astype(np.uint32) << 16).view(np.float32)
            elif arr.dtype != np.float32:
                arr = arr.astype(np.float32)
            yield arr
