"""Deployment: register a model with Ollama under a Modelfile that matches training, and check it.

The verbs import their implementation (and the `ollama`/`gguf` libraries) only when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from llmforge.config.deploy import DeployConfig
    from llmforge.deployment.stage import DeployPlan, DeployResult
    from llmforge.workspace import Workspace


def plan(
    deploy: DeployConfig,
    workspace: Workspace,
    *,
    export: str | None = None,
    base: str | None = None,
    adapter: str | None = None,
    name: str | None = None,
    quant: str | None = None,
    system: str | None = None,
    host: str | None = None,
    force: bool = False,
) -> DeployPlan:
    """Decide the Modelfile for deploy/<name>/ without contacting Ollama or writing anything.

    `export` is an export run name, `<run>/<quant>` or a .gguf path (default: the newest export). `base` instead
    builds on a model already in Ollama (FROM base); with `adapter` (a run whose `export lora-gguf` adapter is
    recorded) the adapter goes on top of `base`. Raises UsageError for what the user must change (unknown template,
    a deployment of that name without `force`, text a Modelfile cannot hold, no GGUF, two sources at once).
    """
    from llmforge.deployment import stage

    return stage.plan(deploy, workspace, export=export, base=base, adapter=adapter, name=name, quant=quant,
                      system=system, host=host, force=force)  # fmt: skip


def write_modelfile(plan: DeployPlan) -> Path:
    """Write the planned deploy/<name>/Modelfile (all a dry run writes) and return its path."""
    from llmforge.deployment import stage

    return stage.write_modelfile(plan)


def run(plan: DeployPlan, *, progress=None) -> DeployResult:
    """Register the planned model with Ollama, check one chat answer, and record it. Raises UsageError when Ollama
    already has the name (without `force`) or lacks the base, or the base is not the adapter's; LlmforgeError when
    Ollama is unreachable, refuses the model, or the registered model fails its check."""
    from llmforge.deployment import stage

    return stage.run(plan, progress=progress)


def deploy_ollama(deploy: DeployConfig, workspace: Workspace, **options: Any) -> DeployResult:
    """run(plan(...)): register in one call, for callers with nothing to show in between (`options` are plan's)."""
    return run(plan(deploy, workspace, **options))


def list_deployments(workspace: Workspace) -> list[dict[str, Any]]:
    """Deployments recorded in the workspace registry, oldest first, each with its lineage."""
    from llmforge.deployment import ollama_deploy

    return ollama_deploy.list_deployments(workspace)


def show_deployment(workspace: Workspace, name: str, *, host: str | None = None) -> dict[str, Any]:
    """A deployment's record, manifest and Modelfile, plus what Ollama reports for it (when reachable)."""
    from llmforge.deployment import ollama_deploy

    return ollama_deploy.show_deployment(workspace, name, host=host)


def remove_deployment(workspace: Workspace, name: str, *, host: str | None = None) -> dict[str, Any]:
    """Delete the model from Ollama and forget the deployment in the workspace (folder and registry entry)."""
    from llmforge.deployment import ollama_deploy

    return ollama_deploy.remove_deployment(workspace, name, host=host)
