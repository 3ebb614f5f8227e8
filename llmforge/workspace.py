"""Every artifact path in a project's workspace: the contract between stages (conventions.md)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from llmforge.errors import UsageError


def timestamp() -> str:
    return datetime.now().strftime("%Y%m%d-%H%M%S")


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
        return self.runs_dir / run

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

    def latest_run(self) -> str:
        runs = self.runs()
        if not runs:
            raise UsageError(
                f"no finished training run in {self.runs_dir}",
                hint="train one first: llmforge train --method lora",
            )
        return runs[-1]

    # eval/<stamp>/
    @property
    def eval_root(self) -> Path:
        return self.root / "eval"

    def eval_dir(self, stamp: str | None = None) -> Path:
        return self.eval_root / (stamp or timestamp())

    # export/<run>/
    @property
    def export_root(self) -> Path:
        return self.root / "export"

    def export_dir(self, run: str) -> Path:
        return self.export_root / run

    def merged_dir(self, run: str) -> Path:
        return self.export_dir(run) / "merged"

    def gguf_file(self, run: str, name: str, quant: str) -> Path:
        return self.export_dir(run) / f"{name}-{quant.lower()}.gguf"

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
        return self.deploy_root / name

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

    # the registry of runs, exports and deployments
    @property
    def registry_file(self) -> Path:
        return self.root / "registry.json"


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
