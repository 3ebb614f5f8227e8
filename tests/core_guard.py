"""A simulated install of llmforge with the core dependencies and chosen extras only: in a subprocess, importing
anything outside what this checkout's pyproject.toml declares for them (and, transitively, what the installed
packages declare) fails, as it would in a fresh environment with `pip install 'llmforge-cli[EXTRA]'`.
With guard_children, every Python process the CLI starts (llama.cpp's converter, pip) runs under the same guard."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

GUARD = r"""
EXTRAS = __EXTRAS__
OWN_REQUIRES = __REQUIRES__
import importlib.abc, importlib.metadata as md, re, sys

def requires_of(name):
    # our own requirements come from the checkout under test, not from whatever version is installed
    if name.lower().replace("_", "-") == "llmforge-cli" and OWN_REQUIRES is not None:
        return OWN_REQUIRES
    return md.requires(name) or []

def closure(name, seen):
    key = name.lower().replace("_", "-")
    if key in seen:
        return
    seen.add(key)
    try:
        requires = requires_of(name)
    except md.PackageNotFoundError:
        return
    for req in requires:
        if "extra ==" in req:
            continue
        if "platform_system" in req and "Windows" in req:
            continue
        closure(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0], seen)

allowed_dists = set()
closure("llmforge-cli", allowed_dists)
for extra in EXTRAS:  # the extras this simulated install has, with what they pull in
    for req in requires_of("llmforge-cli"):
        if re.search(r"extra\s*==\s*['\"]" + re.escape(extra) + r"['\"]", req):
            closure(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0], allowed_dists)
allowed = {"llmforge", *sys.stdlib_module_names, "_distutils_hack", "pip"}  # every venv has pip
installed = md.packages_distributions()
for module, dists in installed.items():
    if any(d.lower().replace("_", "-") in allowed_dists for d in dists):
        allowed.add(module)

class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        top = fullname.split(".")[0]
        # only installed distributions are blocked: a script's own modules beside it (llama.cpp's conversion/) load
        if top not in allowed and not top.startswith("_") and top in installed:
            raise ModuleNotFoundError(f"No module named {top!r} (not a core dependency)", name=top)
        return None

sys.meta_path.insert(0, Block())
import importlib.util
_find_spec = importlib.util.find_spec
def find_spec(name, package=None):  # require_extra() asks this: answer as a core-only install would
    if name.split(".")[0] not in allowed and name.split(".")[0] in installed:
        return None
    return _find_spec(name, package)
importlib.util.find_spec = find_spec
"""


def own_requires() -> list[str] | None:
    """This checkout's requirements in metadata form ('gguf>=0.17; extra == "gguf"'), or None without tomllib."""
    try:
        import tomllib
    except ImportError:  # Python 3.10: fall back to the installed metadata
        return None
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra, items in project["optional-dependencies"].items():
        reqs += [f'{re.sub(r";.*", "", r).strip()}; extra == "{extra}"' for r in items]
    return reqs


def guard_code(extras: tuple[str, ...]) -> str:
    return GUARD.replace("__EXTRAS__", repr(list(extras))).replace("__REQUIRES__", repr(own_requires()))


def run_cli(*args: str, extras: tuple[str, ...] = (), guard_children: bool = False, timeout: float = 120,
            env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the CLI where only the core dependencies and those of `extras` can be imported."""
    code = guard_code(extras) + f"\nsys.argv = ['llmforge', *{list(args)!r}]\nfrom llmforge.cli.app import main\nmain()\n"
    env = dict(env if env is not None else os.environ)
    with tempfile.TemporaryDirectory() as site_dir:
        if guard_children:  # sitecustomize runs at the start of every Python process with this PYTHONPATH
            Path(site_dir, "sitecustomize.py").write_text(guard_code(extras))
            env["PYTHONPATH"] = os.pathsep.join(p for p in (site_dir, env.get("PYTHONPATH", "")) if p)
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, env=env)
