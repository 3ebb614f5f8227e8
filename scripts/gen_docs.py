"""Generate docs/cli.md from every command's --help and docs/config.md from the config tree's descriptions.

`make docs` writes them; tests/unit/test_docs.py fails when the committed files drift from what this prints.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Fixed width and no colour, so the output does not depend on the terminal that runs it.
os.environ["TERMINAL_WIDTH"] = "100"
os.environ["NO_COLOR"] = "1"
os.environ.pop("FORCE_COLOR", None)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def cli_markdown() -> str:
    from typer.testing import CliRunner

    from llmforge.cli.app import app, command_paths

    runner = CliRunner()
    parts = [
        "# Command-line reference",
        "",
        "Generated from `--help` by `make docs` (scripts/gen_docs.py); a test fails when it drifts.",
        "",
    ]
    for path in command_paths():
        title = " ".join(["llmforge", *path])
        result = runner.invoke(app, [*path, "--help"], env={"TERMINAL_WIDTH": "100", "NO_COLOR": "1"})
        text = "\n".join(line.rstrip() for line in result.output.strip().splitlines())
        parts += [f"## `{title}`", "", "```text", text, "```", ""]
    return "\n".join(parts).rstrip() + "\n"


def config_markdown() -> str:
    import json

    from pydantic_core import PydanticUndefined

    from llmforge.config.loader import _model_class
    from llmforge.config.root import LlmforgeConfig

    lines = [
        "# Config reference",
        "",
        "Generated from the config tree's field descriptions by `make docs` (scripts/gen_docs.py).",
        "Every key can be set in the YAML file, as `LLMFORGE_<SECTION>__<KEY>` in the environment, or with",
        "`--set section.key=value`; unknown keys are errors. `llmforge config init` writes all of them with comments.",
        "",
    ]

    def default_of(info) -> str:
        if info.default_factory is not None:
            value = info.default_factory()
        elif info.default is PydanticUndefined:
            return "(required)"
        else:
            value = info.default
        if hasattr(value, "model_dump"):
            return ""
        return f"`{json.dumps(value, default=str)}`"

    def walk(model, prefix: str, depth: int) -> None:
        rows = []
        subs = []
        for name, info in model.model_fields.items():
            sub = _model_class(info.annotation)
            if sub is not None:
                subs.append((name, info, sub))
            else:
                rows.append(f"| `{prefix}{name}` | {default_of(info)} | {info.description} |")
        if rows:
            lines.extend(["| key | default | description |", "| --- | --- | --- |", *rows, ""])
        for name, info, sub in subs:
            lines.extend([f"{'#' * min(depth + 2, 4)} `{prefix}{name}`", "", info.description or "", ""])
            walk(sub, f"{prefix}{name}.", depth + 1)

    walk(LlmforgeConfig, "", 0)
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    docs = ROOT / "docs"
    docs.mkdir(exist_ok=True)
    (docs / "cli.md").write_text(cli_markdown(), encoding="utf-8")
    (docs / "config.md").write_text(config_markdown(), encoding="utf-8")
    print(f"wrote {docs / 'cli.md'} and {docs / 'config.md'}")


if __name__ == "__main__":
    main()
