"""`llmforge --help` must not import heavy libraries: proven in a fresh interpreter, not by memory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = [
    "torch", "transformers", "peft", "trl", "unsloth", "bitsandbytes", "datasets", "accelerate", "llama_cpp",
    "gguf", "ollama", "fastapi", "uvicorn", "numpy", "pyarrow", "matplotlib", "pydantic_settings",
]  # fmt: skip
PACKAGE_ROOT = Path(__file__).resolve().parents[2] / "llmforge"
# Every subpackage (stage packages included) and every top-level module but checkpoints.py, which loads weights.
LIGHT_MODULES = sorted(
    [f"llmforge.{p.parent.name}" for p in PACKAGE_ROOT.glob("*/__init__.py")]
    + [f"llmforge.{p.stem}" for p in PACKAGE_ROOT.glob("*.py") if p.stem not in ("checkpoints", "__main__", "__init__")]
)


def _loaded_after(code: str) -> list[str]:
    probe = code + f"\nimport json, sys\nprint(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cli_app_imports_no_heavy_module():
    assert _loaded_after("import llmforge.cli.app") == []


def test_packages_and_light_modules_import_no_heavy_module():
    assert "llmforge.config" in LIGHT_MODULES and "llmforge.workspace" in LIGHT_MODULES
    assert _loaded_after("\n".join(f"import {name}" for name in LIGHT_MODULES)) == []


def test_every_help_page_imports_no_heavy_module():
    code = (
        "from typer.testing import CliRunner\nfrom llmforge.cli.app import app, command_paths\n"
        "for path in command_paths():\n"
        "    r = CliRunner().invoke(app, path + ['--help'])\n"
        "    assert r.exit_code == 0, (path, r.output)\n"
    )
    assert _loaded_after(code) == []


def _loaded_modules_after(code: str, prefixes: tuple[str, ...]) -> list[str]:
    probe = (
        code + f"\nimport json, sys\nprint(json.dumps(sorted(m for m in sys.modules if m.startswith({prefixes!r}))))"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_root_help_builds_no_config_model():
    """`llmforge --help` is what users wait for most: the config tree (every pydantic model built on import),
    pydantic itself and yaml stay unloaded until a command loads a config."""
    code = (
        "import sys\nfrom llmforge.cli.app import main\nsys.argv = ['llmforge', '--help']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code in (0, None), exc.code\n"
    )
    assert _loaded_modules_after(code, ("llmforge.config", "pydantic", "yaml")) == []


def test_no_help_page_loads_the_config_tree():
    # Typer's own parameter adapters import pydantic for a subcommand's help; our models must still not be built.
    code = (
        "from typer.testing import CliRunner\nfrom llmforge.cli.app import app, command_paths\n"
        "for path in command_paths():\n"
        "    r = CliRunner().invoke(app, path + ['--help'])\n"
        "    assert r.exit_code == 0, (path, r.output)\n"
    )
    assert _loaded_modules_after(code, ("llmforge.config",)) == []
