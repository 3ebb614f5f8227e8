"""A simulated install of llmforge with the core dependencies and chosen extras only: in a subprocess, importing
anything outside what the installed package metadata declares for them (transitively) fails, as it would in a fresh
environment with `pip install 'llmforge-cli[EXTRA]'`."""

from __future__ import annotations

import subprocess
import sys

GUARD = r"""
EXTRAS = __EXTRAS__
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
closure("llmforge-cli", allowed_dists)
for extra in EXTRAS:  # the extras this simulated install has, with what they pull in
    for req in md.requires("llmforge-cli") or []:
        if re.search(r"extra\s*==\s*['\"]" + re.escape(extra) + r"['\"]", req):
            closure(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0], allowed_dists)
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


def run_cli(*args: str, extras: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """Run the CLI where only the core dependencies and those of `extras` can be imported."""
    code = GUARD.replace("__EXTRAS__", repr(list(extras))) + f"\nsys.argv = ['llmforge', *{list(args)!r}]\nfrom llmforge.cli.app import main\nmain()\n"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
