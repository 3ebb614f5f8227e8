"""Every artifact path in a project's workspace: the contract between stages (conventions.md)."""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PureWindowsPath

from llmforge.errors import UsageError

# A file system allows 255 bytes per name; stay well below so suffixes (-q4_k_m.gguf, -2) still fit.
NAME_MAX = 128
NAME_HINT = "a name is one folder name: letters, digits, '-', '_' and '.', not starting with '.'"


def timestamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


def name_problem(name: object) -> str | None:
    """Why `name` cannot be one folder (or file stem) inside the workspace, or None when it can.

    Every name that becomes a path (run, export, deploy and eval names, names given on the command line) passes
    here, so `../x`, `/abs`, `C:x`, `.hidden` or a newline can never reach a path join, a mkdir or an rmtree."""
    if not isinstance(name, str):
        return f"expected a string, got {type(name).__name__}"
    if not name.strip():
        return "it is empty"
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Zl", "Zp") for ch in name):
        return "it contains a control character"
    if "/" in name or "\\" in name:
        return "it contains a path separator"
    if name.startswith("."):
        return "it starts with '.' ('..' leaves the folder, '.x' hides it)"
    if PureWindowsPath(name).drive or Path(name).is_absolute():
        return "it is an absolute path or names a drive"
    if name != name.strip():
        return "it starts or ends with a space"
    if len(name) > NAME_MAX:
        return f"it is longer than {NAME_MAX} characters"
    return None


def check_name(name: object, field: str) -> str:
    """`name` if it can name a folder in the workspace; else a UsageError (exit 2) naming `field` and the value."""
    problem = name_problem(name)
    if problem is not None:
        raise UsageError(f"{field}: {name!r} cannot be used as a name ({problem})", hint=NAME_HINT)
    return name  # type: ignore[return-value]


@dataclass(frozen=True)
class Workspace:
    """Paths under `project.workdir`. Nothing here creates files; stages write through llmforge.atomic."""

    root: Path

    # data/
    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def split_file(self, split: str) -> Path:
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}")
        return self.data_dir / f"{split}.jsonl"

    @property
    def rejected_file(self) -> Path:
        return self.data_dir / "rejected.jsonl"

    @property
    def duplicates_file(self) -> Path:
        return self.data_dir / "duplicates.jsonl"

    @property
    def data_report_json(self) -> Path:
        return self.data_dir / "report.json"

    @property
    def data_report_md(self) -> Path:
        return self.data_dir / "report.md"

    @property
    def data_manifest(self) -> Path:
        return self.data_dir / "manifest.json"

    @property
    def generated_file(self) -> Path:
        """Question/answer pairs from `llmforge data generate` (an input to `data prepare`, not a split)."""
        return self.data_dir / "generated.jsonl"

    # runs/<run>/
    @property
    def runs_dir(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run: str) -> Path:
        return self.runs_dir / check_name(run, "run name")

    def checkpoints_dir(self, run: str) -> Path:
        return self.run_dir(run) / "checkpoints"

    def adapter_dir(self, run: str) -> Path:
        return self.run_dir(run) / "adapter"

    def model_dir(self, run: str) -> Path:
        return self.run_dir(run) / "model"

    def metrics_file(self, run: str) -> Path:
        return self.run_dir(run) / "metrics.jsonl"

    def run_manifest(self, run: str) -> Path:
        return self.run_dir(run) / "manifest.json"

    def runs(self) -> list[str]:
        """Complete runs (those with a manifest), oldest first by manifest time."""
        return _complete(self.runs_dir)

    def latest_run(self, base_model: str | None = None) -> str:
        """The newest finished run. With `base_model` (a hub id or the absolute path runs record), the newest
        fine-tune of that model: a run from scratch or of another base is not the "run" someone comparing against
        that base means. Falls back to the newest finished run when none matches."""
        usable = self.runs()
        if not usable:
            raise UsageError(
                f"no finished training run in {self.runs_dir}",
                hint="train one first: llmforge train --method lora",
            )
        if base_model:
            same = [r for r in usable if _manifest(self.run_manifest(r)).get("base_model") == base_model]
            if same:
                return same[-1]
        return usable[-1]

    # eval/<stamp>/
    @property
    def eval_root(self) -> Path:
        return self.root / "eval"

    def eval_dir(self, stamp: str | None = None) -> Path:
        return self.eval_root / check_name(stamp or timestamp(), "eval stamp")

    # export/<run>/
    @property
    def export_root(self) -> Path:
        return self.root / "export"

    def export_dir(self, run: str) -> Path:
        return self.export_root / check_name(run, "export name")

    def merged_dir(self, run: str) -> Path:
        return self.export_dir(run) / "merged"

    def gguf_file(self, run: str, name: str, quant: str) -> Path:
        return self.export_dir(run) / f"{check_name(name, 'export file name')}-{quant.lower()}.gguf"

    def export_manifest(self, run: str) -> Path:
        return self.export_dir(run) / "manifest.json"

    def exports(self) -> list[str]:
        return _complete(self.export_root)

    def latest_export(self) -> str:
        exports = self.exports()
        if not exports:
            raise UsageError(
                f"no GGUF export in {self.export_root}", hint="make one first: llmforge export gguf --quant q8_0"
            )
        return exports[-1]

    # deploy/<name>/
    @property
    def deploy_root(self) -> Path:
        return self.root / "deploy"

    def deploy_dir(self, name: str) -> Path:
        return self.deploy_root / check_name(name, "deploy name")

    def modelfile(self, name: str) -> Path:
        return self.deploy_dir(name) / "Modelfile"

    # serve/
    @property
    def serve_dir(self) -> Path:
        return self.root / "serve"

    @property
    def conversations_dir(self) -> Path:
        return self.serve_dir / "conversations"

    @property
    def serve_manifest(self) -> Path:
        return self.serve_dir / "manifest.json"

    # retrieval/: the document indexes of `chat --docs` and serve.retrieval
    @property
    def retrieval_dir(self) -> Path:
        return self.root / "retrieval"

    # the registry of runs, exports and deployments
    @property
    def registry_file(self) -> Path:
        return self.root / "registry.json"


def _manifest(path: Path) -> dict:
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return body if isinstance(body, dict) else {}


def _complete(folder: Path) -> list[str]:
    """Names of subfolders holding a manifest.json (a finished artifact), oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for child in folder.iterdir():
        manifest = child / "manifest.json"
        if child.is_dir() and not child.name.startswith(".") and manifest.is_file():
            try:
                finished = json.loads(manifest.read_text(encoding="utf-8")).get("finished_at", "")
            except (OSError, ValueError):
                continue
            found.append((str(finished), child.name))
    return [name for _, name in sorted(found)]
