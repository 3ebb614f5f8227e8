"""Deployment: register a model with Ollama under a Modelfile that matches training, and check it.

The verbs import their implementation (and the `ollama`/`gguf` libraries) only when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from llmforge.config.deploy import DeployConfig
    from llmforge.deployment.ollama_deploy import DeployResult
    from llmforge.workspace import Workspace


def deploy_ollama(
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
    dry_run: bool = False,
    force: bool = False,
) -> DeployResult:
    """Write deploy/<name>/Modelfile, register it with Ollama, and check one chat answer.

    `export` is an export run name, `<run>/<quant>` or a .gguf path (default: the newest export). `base` instead
    builds on a model already in Ollama (FROM base); with `adapter` (a run whose `export lora-gguf` adapter is
    recorded) the adapter goes on top of `base`, after checking that `base` is the model it was trained on. With
    `dry_run` only the Modelfile is written and nothing is contacted. Raises UsageError for what the user must change
    (unknown template, name taken without `force`, text a Modelfile cannot hold, no GGUF, a base Ollama does not have
    or that is not the adapter's) and LlmforgeError when
    Ollama is unreachable, refuses the model, or the registered model fails its check.
    """
    from llmforge.deployment import ollama_deploy

    return ollama_deploy.deploy_ollama(
        deploy, workspace, export=export, base=base, adapter=adapter, name=name, quant=quant, system=system, host=host, dry_run=dry_run,
        force=force,
    )  # fmt: skip


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
