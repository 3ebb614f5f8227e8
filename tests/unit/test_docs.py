"""docs/cli.md and docs/config.md are generated; they must match what the code says now."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def generated(kind: str) -> str:
    code = f"import sys; sys.path.insert(0, 'scripts'); import gen_docs; sys.stdout.write(gen_docs.{kind}_markdown())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout


def test_cli_reference_is_current():
    assert (ROOT / "docs/cli.md").read_text(encoding="utf-8") == generated("cli"), "run `make docs`"


def test_config_reference_is_current():
    assert (ROOT / "docs/config.md").read_text(encoding="utf-8") == generated("config"), "run `make docs`"


def test_template_table_is_current():
    assert (ROOT / "docs/templates.md").read_text(encoding="utf-8") == generated("templates"), "run `make docs`"
