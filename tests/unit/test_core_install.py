"""What `pipx install llmforge` (no extras) gives must work: --help, config and doctor, and every other command must
name the extra it lacks. Proven in a subprocess where importing anything outside the core dependencies (as the
installed package metadata declares them, transitively) fails, as it would in a core-only environment."""

from __future__ import annotations

import json
import subprocess
import sys

GUARD = r"""
import importlib.abc, importlib.metadata as md, re, sys

def closure(name, seen):
    key = name.lower().replace("_", "-")
    if key in seen:
        return
    seen.add(key)
    try:
        requires = md.requires(name) or []
    except md.PackageNotFoundError:
        return
    for req in requires:
        if "extra ==" in req:
            continue
        if "platform_system" in req and "Windows" in req:
            continue
        closure(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0], seen)

allowed_dists = set()
closure("llmforge", allowed_dists)
allowed = {"llmforge", *sys.stdlib_module_names, "_distutils_hack"}
for module, dists in md.packages_distributions().items():
    if any(d.lower().replace("_", "-") in allowed_dists for d in dists):
        allowed.add(module)

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        top = fullname.split(".")[0]
        if top not in allowed and not top.startswith("_"):
            raise ModuleNotFoundError(f"No module named {top!r} (not a core dependency)", name=top)
        return None

sys.meta_path.insert(0, Block())
import importlib.util
_find_spec = importlib.util.find_spec
def find_spec(name, package=None):  # require_extra() asks this: answer as a core-only install would
    if name.split(".")[0] not in allowed:
        return None
    return _find_spec(name, package)
importlib.util.find_spec = find_spec
"""


def run_cli(*args: str) -> subprocess.CompletedProcess:
    code = GUARD + f"\nsys.argv = ['llmforge', *{list(args)!r}]\nfrom llmforge.cli.app import main\nmain()\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_help_config_and_runs_work_with_core_dependencies_only(tmp_path):
    assert run_cli("--help").returncode == 0
    for command in ("data", "train", "eval", "export", "deploy", "serve", "chat", "runs", "config", "doctor"):
        result = run_cli(command, "--help")
        assert result.returncode == 0, (command, result.stderr[-1500:])
    shown = run_cli("config", "show", "-s", "train.lora.rank=8", "--sources", "--json")
    assert shown.returncode == 0, shown.stderr[-1500:]
    assert json.loads(shown.stdout)["sources"]["train.lora.rank"] == "--set"
    assert run_cli("runs", "list").returncode == 0


def test_commands_that_need_an_extra_say_which():
    result = run_cli("train", "-s", "model.name=some/model", "-s", "train.data=x.jsonl")
    assert result.returncode == 2
    assert "extra" in result.stderr and "pipx inject llmforge" in result.stderr, result.stderr[-1500:]
    assert "Traceback" not in result.stderr
    for args in (("serve", "--model", "x.gguf"), ("chat", "http://127.0.0.1:9"), ("data", "stats", "x.jsonl")):
        result = run_cli(*args)
        assert result.returncode == 2 and "pipx inject llmforge" in result.stderr, (args, result.stderr[-1500:])
