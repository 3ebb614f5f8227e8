"""The root of the config tree: one section per stage plus the shared `project` and `model`."""

from __future__ import annotations

from pydantic import Field

from llmforge.config.base import Section
from llmforge.config.data import DataConfig
from llmforge.config.deploy import DeployConfig
from llmforge.config.eval import EvalConfig
from llmforge.config.export import ExportConfig
from llmforge.config.model import ModelConfig
from llmforge.config.project import ProjectConfig
from llmforge.config.serve import ServeConfig
from llmforge.config.train import TrainConfig
from llmforge.config.tune import TuneConfig


class LlmforgeConfig(Section):
    project: ProjectConfig = Field(default_factory=ProjectConfig, description="Project name and workspace.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The base model.")
    data: DataConfig = Field(default_factory=DataConfig, description="Data preparation (`llmforge data`).")
    train: TrainConfig = Field(default_factory=TrainConfig, description="Training (`llmforge train`).")
    tune: TuneConfig = Field(default_factory=TuneConfig, description="Hyperparameter search (`llmforge tune`).")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Evaluation (`llmforge eval`).")
    export: ExportConfig = Field(default_factory=ExportConfig, description="GGUF export (`llmforge export`).")
    deploy: DeployConfig = Field(default_factory=DeployConfig, description="Ollama deployment (`llmforge deploy`).")
    serve: ServeConfig = Field(default_factory=ServeConfig, description="HTTP serving (`llmforge serve`).")
