"""Secrets (API keys): their config type and the one place they are masked, whether they sit in the resolved config
(config show, config.yaml, manifests) or in a recorded command line (manifest argv).

Code that needs a key's value asks for it (`.get_secret_value()`); every dump of the config gets MASK instead.
"""

from __future__ import annotations

import typing
from collections.abc import Sequence
from typing import Annotated

from pydantic import PlainSerializer, SecretStr

MASK = "***"

# Serialised as MASK in every mode (json and python), so no model_dump of the config can carry the value.
Secret = Annotated[SecretStr, PlainSerializer(lambda _value: MASK, return_type=str, when_used="always")]

# Typed flags whose value is a secret: `serve --api-key` and `chat --api-key`.
SECRET_FLAGS = ("--api-key",)
SET_FLAGS = ("--set", "-s")


def _holds_secret(annotation: typing.Any) -> bool:
    if annotation is SecretStr:
        return True
    return any(_holds_secret(arg) for arg in typing.get_args(annotation))


def is_secret_path(dotted: str) -> bool:
    """Whether the config leaf at `dotted` (e.g. serve.api_key) holds a secret."""
    from llmforge.config.loader import field_info
    from llmforge.errors import ConfigError

    try:
        return _holds_secret(field_info(dotted.strip()).annotation)
    except ConfigError:
        return False


def secret_paths() -> list[str]:
    """Every dotted config path that holds a secret."""
    from llmforge.config.loader import leaf_paths

    return [dotted for dotted in leaf_paths() if is_secret_path(dotted)]


def mask_setting(item: str) -> str:
    """'serve.api_key=sk-1' -> 'serve.api_key=***'; any other KEY=VALUE is returned as is."""
    key, sep, _value = item.partition("=")
    return f"{key}={MASK}" if sep and is_secret_path(key) else item


def mask_argv(argv: Sequence[str]) -> list[str]:
    """A command line fit to record: the values of secret flags and of secret --set items replaced by MASK.

    Handles `--api-key X`, `--api-key=X`, `-s KEY=X`, `--set KEY=X`, `--set=KEY=X` and `-sKEY=X`."""
    out: list[str] = []
    next_is: str | None = None  # "secret" or "setting": what the previous flag says this argument is
    for arg in argv:
        if next_is == "secret":
            out.append(MASK)
        elif next_is == "setting":
            out.append(mask_setting(arg))
        else:
            flag, sep, value = arg.partition("=")
            if flag in SECRET_FLAGS:
                out.append(f"{flag}={MASK}" if sep else arg)
            elif flag in SET_FLAGS:
                out.append(f"{flag}={mask_setting(value)}" if sep else arg)
            elif arg.startswith("-s") and not arg.startswith("--") and len(arg) > 2:
                out.append("-s" + mask_setting(arg[2:]))
            else:
                out.append(arg)
            if not sep:
                next_is = "secret" if flag in SECRET_FLAGS else "setting" if flag in SET_FLAGS else None
            continue
        next_is = None
    return out
