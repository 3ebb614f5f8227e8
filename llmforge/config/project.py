"""`project:` what this project is called and where its workspace lives."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from llmforge.config.base import FolderName, Section


class ProjectConfig(Section):
    name: FolderName = Field("llmforge-project", description="Project name; names the workspace folder (a plain folder name: no '/', no leading '.').", min_length=1)
    workdir: Path | None = Field(
        None, description="Workspace folder for every stage's outputs (default ./llmforge-work/<project.name>)."
    )

    @property
    def workspace_root(self) -> Path:
        return self.workdir if self.workdir is not None else Path("llmforge-work") / self.name
