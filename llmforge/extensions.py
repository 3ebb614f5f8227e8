"""Users' own functions named in the config by import path ("mypkg.module:function"): data.transforms and custom
eval.metrics. Loading and calling them turns every failure into a UsageError that names the entry."""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

from llmforge.errors import UsageError

# module path (dotted identifiers), a colon, then a function or a dotted attribute path inside the module
ENTRY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
HINT = "the module must be importable: installed, or its folder on PYTHONPATH"


def is_entry(value: str) -> bool:
    """Whether `value` has the "module:function" shape (config validation; nothing is imported)."""
    return ENTRY.fullmatch(value) is not None


def one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def load(entry: str, what: str) -> Callable[..., Any]:
    """The function `entry` names; `what` ("data.transforms", "eval.metrics") says where the entry came from."""
    if not is_entry(entry):
        raise UsageError(f"{what}: {entry!r} is not an import path like 'mypkg.module:function'")
    module_name, _, attrs = entry.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as exc:  # ImportError, or anything the user's module raises while it is imported
        raise UsageError(f"{what}: {entry}: cannot import {module_name} ({one_line(exc)})", hint=HINT) from None
    for attr in attrs.split("."):
        try:
            target = getattr(target, attr)
        except AttributeError:
            raise UsageError(f"{what}: {entry}: {module_name} has no {attrs}", hint="check the function's name") from None
    if not callable(target):
        raise UsageError(f"{what}: {entry}: {attrs} is a {type(target).__name__}, not a function")
    return target


def name_of(entry: str) -> str:
    """The key a custom metric is reported under: the function's own name."""
    return entry.rpartition(":")[2].rpartition(".")[2]
