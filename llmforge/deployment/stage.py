"""The deploy stage in two parts: plan() decides the Modelfile without contacting Ollama (the source, the template
and its verdict, the stops, the parameters; what --dry-run shows), run(plan) writes it, registers the model through
the official client, checks one chat answer, and records deploy/<name>/manifest.json and the registry.

The sources (DeployPlan.kind): an export or any .gguf file, a model already in Ollama (`base`, --from) or a GGUF
LoRA on its base (`adapter` + `base`). How each becomes a Modelfile is ollama_deploy's plan_export / plan_from /
plan_adapter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llmforge import atomic, manifest, ollama_client, registry
from llmforge.config.deploy import DeployConfig
from llmforge.deployment import modelfile as mf
from llmforge.deployment.ollama_deploy import (
    _check_base,
    _check_registered_template,
    _parameter_stops,
    _registered_names,
    _show_base,
    check_deployment,
    check_name,
    folder_name,
    full_name,
    plan_adapter,
    plan_export,
    plan_from,
)
from llmforge.errors import LlmforgeError, UsageError
from llmforge.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Prepared:
    """What run() needs from planning and the plan does not show."""

    deploy: DeployConfig
    workspace: Workspace
    spec: mf.ModelfileSpec
    text: str  # the Modelfile, rendered (so text it cannot hold is refused before anything is written)
    leak_markers: list[str]  # strings the check's answer must not contain
    adapter_run: str | None  # the run whose adapter goes on the base (kind adapter)
    expected_base: dict[str, Any] | None  # what the adapter's base must report (kind adapter)
    quant: str | None
    host: str | None  # as asked (--host or deploy.host); run() resolves it
    force: bool
    timer: manifest.Timer


@dataclass(frozen=True)
class DeployPlan:
    """A deployment decided but not done: what `llmforge deploy ollama --dry-run` shows, and all `run` needs.
    as_dict() is the dry run's JSON, key for key (the same keys as DeployResult's, with nothing contacted yet)."""

    name: str
    modelfile: Path  # deploy/<folder>/Modelfile (written by run(), or by write_modelfile() for a dry run)
    create_command: str
    run_command: str
    gguf: Path | None  # None when FROM is a model already in Ollama
    export_id: str  # the registry id it is made from (<run>/<quant>, <run>/lora), a .gguf path, or ollama:<base>
    family: str | None  # None: embedded or inherited (no TEMPLATE)
    template_source: str  # "identified" | "configured" | "embedded" | "inherited"
    template_status: str | None  # deploy_verdict's status ("exact" | "caveats"); None when not judged
    variant: str
    caveats: list[dict[str, str]]  # [{"id", "text"}]
    stop: list[str]
    parameters: dict[str, Any]
    warnings: list[str]
    kind: str  # "export" | "gguf" (a file) | "from" (a model in Ollama) | "adapter" (LoRA on a base)
    base: str | None  # FROM: the model in Ollama (kinds from and adapter)
    adapter: Path | None
    prepared: _Prepared = field(repr=False, compare=False)

    @property
    def unchecked(self) -> list[str]:
        """What a dry run leaves unchecked because it contacts nothing (said after the plan's own warnings)."""
        if not self.base:
            return []
        return [f"dry run: '{self.base}' was not looked up in Ollama"
                + (", so the adapter's base is unchecked" if self.adapter else "")]  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        return _shown(self, dry_run=True, host=None, digest=None, manifest=None, check=None,
                      warnings=self.warnings + self.unchecked, base_check=None)  # fmt: skip


@dataclass(frozen=True)
class DeployResult:
    """A registered (and checked) deployment. as_dict() is `llmforge deploy ollama --json`, key for key."""

    name: str
    modelfile: Path
    create_command: str
    run_command: str
    gguf: Path | None
    export_id: str
    family: str | None
    template_source: str
    template_status: str | None
    variant: str
    caveats: list[dict[str, str]]
    stop: list[str]
    parameters: dict[str, Any]
    host: str  # the Ollama it is registered with
    digest: str | None  # the GGUF blob's (None when FROM is a model in Ollama)
    manifest: Path
    check: dict[str, Any] | None  # the chat check (ok, problem, prompt, content, ...); None with deploy.check false
    warnings: list[str]
    kind: str
    base: str | None
    adapter: Path | None
    base_check: dict[str, Any] | None  # what /api/show of the base was compared with (kind adapter)

    def as_dict(self) -> dict[str, Any]:
        return _shown(self, dry_run=False, host=self.host, digest=self.digest, manifest=self.manifest,
                      check=self.check, warnings=self.warnings, base_check=self.base_check)  # fmt: skip


def _shown(done: DeployPlan | DeployResult, **outcome: Any) -> dict[str, Any]:
    """The JSON both print, in its fixed order: the Modelfile's facts, then what registering found."""
    body = {
        "name": done.name, "modelfile": done.modelfile, "create_command": done.create_command,
        "run_command": done.run_command, "gguf": done.gguf, "export_id": done.export_id, "family": done.family,
        "template_source": done.template_source, "template_status": done.template_status, "variant": done.variant,
        "caveats": done.caveats, "stop": done.stop, "parameters": done.parameters, "dry_run": outcome["dry_run"],
        "host": outcome["host"], "digest": outcome["digest"], "manifest": outcome["manifest"],
        "check": outcome["check"], "warnings": outcome["warnings"], "kind": done.kind, "base": done.base,
        "adapter": done.adapter, "base_check": outcome["base_check"],
    }  # fmt: skip
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in body.items()}


# ----------------------------------------------------------------------------------------------------------------
# plan
# ----------------------------------------------------------------------------------------------------------------


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
    """Decide the Modelfile: the name (free in this workspace unless `force`), the source, the template and stops,
    SYSTEM, PARAMETERs and MESSAGEs, rendered. Reads the GGUF and the training tokenizer; writes nothing and
    contacts nothing. Raises UsageError for everything a user must change before deploying."""
    timer = manifest.Timer()
    name = check_name(name or deploy.name or "")
    folder = workspace.deploy_dir(folder_name(name))
    atomic.refuse_overwrite(folder / "manifest.json", force, f"a deployment named '{name}'")
    base = _check_sources(name, export, base, adapter)
    if adapter:
        spec, facts = plan_adapter(deploy, workspace, run=adapter, base=base or "", system=system)
    elif base:
        spec, facts = plan_from(deploy, base=base, system=system)
    else:
        spec, facts = plan_export(deploy, workspace, export=export, quant=quant, system=system)
    modelfile_path = folder / "Modelfile"
    text = mf.render(spec, name=name)  # refuses unwritable text before anything is written or sent
    family = facts["family"]
    return DeployPlan(
        name=name,
        modelfile=modelfile_path,
        create_command=mf.create_command(name, modelfile_path),
        run_command=f"ollama run {name}",
        gguf=facts.get("gguf"),
        export_id=facts["parent"],
        family=family.name if family else None,
        template_source=facts["template_source"],
        template_status=facts["template_status"],
        variant=family.variant if family else "",
        caveats=facts["caveats"],
        stop=list(spec.stop),
        parameters=dict(spec.parameters),
        warnings=facts["warnings"],
        kind=facts["kind"],
        base=facts.get("base"),
        adapter=facts.get("adapter"),
        prepared=_Prepared(
            deploy=deploy,
            workspace=workspace,
            spec=spec,
            text=text,
            leak_markers=list(facts["leak_markers"]),
            adapter_run=adapter,
            expected_base=facts.get("expected_base"),
            quant=facts.get("quant"),
            host=host or deploy.host,
            force=force,
            timer=timer,
        ),  # fmt: skip
    )


def _check_sources(name: str, export: str | None, base: str | None, adapter: str | None) -> str | None:
    """One model to deploy: an export (or file), --from BASE, or --adapter RUN --from BASE; BASE checked."""
    if export and (base or adapter):
        raise UsageError(
            f"EXPORT ({export}) and --{'adapter' if adapter else 'from'} name two different models to deploy",
            hint="deploy an export or GGUF file with EXPORT, a model already in Ollama with --from NAME, "
            "or a LoRA run on its base with --adapter RUN --from BASE",
        )
    if adapter and not base:
        raise UsageError(
            f"an adapter is deployed on top of its base model in Ollama, and --from does not name it (--adapter {adapter})",
            hint=f"pull or deploy the base first, then: llmforge deploy ollama --adapter {adapter} --from BASE",
        )
    if base:
        base = check_name(base)
        if full_name(base) == full_name(name):
            raise UsageError(
                f"--from {base} and --name {name} are the same model: registering would replace the base itself",
                hint="choose another --name for the new model",
            )
    return base


def write_modelfile(plan: DeployPlan) -> Path:
    """deploy/<name>/Modelfile, written atomically: all a dry run writes (it contacts nothing)."""
    atomic.write_text(plan.modelfile, plan.prepared.text)
    return plan.modelfile


# ----------------------------------------------------------------------------------------------------------------
# run
# ----------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Registered:
    host: str
    digest: str | None  # the GGUF blob's
    adapter_digest: str | None
    base_check: dict[str, Any] | None
    markers: list[str]  # the plan's leak markers plus the base's own stops


def run(plan: DeployPlan, *, progress=None) -> DeployResult:
    """Register the planned model with Ollama (refusing a taken name unless the plan was forced, and a base that is
    not the adapter's), make sure Ollama kept the TEMPLATE, chat once, and record the manifest and the registry.
    `progress` gets one line per phase. Raises LlmforgeError when Ollama is unreachable or refuses the model, and
    (after recording it) when the registered model fails its check."""
    p = plan.prepared
    host = ollama_client.resolve_host(p.host)
    client = ollama_client.connect(
        host, timeout=ollama_client.REGISTER_TIMEOUT, connect_timeout=ollama_client.CONNECT_TIMEOUT
    )
    _refuse_taken_name(client, host, plan)
    base_check, markers = _look_at_base(client, host, plan)
    write_modelfile(plan)
    if progress:
        progress(f"registering {plan.name} at {host}")
    registered = _register(client, host, plan, base_check, markers)
    check = None
    if p.deploy.check:
        if progress:
            progress(f"checking {plan.name} with one chat request")
        check = check_deployment(client, plan.name, p.spec, registered.markers)
    result = _result(plan, registered, check)
    _write_manifest(result, plan, registered)
    _record(result, plan)
    if check is not None and not check["ok"]:
        raise LlmforgeError(
            f"'{plan.name}' is registered but its check failed: {check['problem']}",
            hint=f"it stays registered for inspection (`ollama run {plan.name}`); remove it with "
            f"`llmforge deploy remove {plan.name}`. The Modelfile is {plan.modelfile}",
        )
    return result


def _refuse_taken_name(client, host: str, plan: DeployPlan) -> None:
    if full_name(plan.name) in _registered_names(client, host) and not plan.prepared.force:
        raise UsageError(
            f"Ollama at {host} already has a model named '{plan.name}'",
            hint="choose another --name, or pass --force to replace it",
        )


def _look_at_base(client, host: str, plan: DeployPlan) -> tuple[dict[str, Any] | None, list[str]]:
    """(the adapter's base check, the leak markers): the base must exist (and be the adapter's); its own stops are
    kept by FROM, so they must not leak either."""
    markers = list(plan.prepared.leak_markers)
    if not plan.base:
        return None, markers
    shown = _show_base(client, host, plan.base)
    markers += [m for m in _parameter_stops(shown.parameters or "") if m not in markers]
    base_check = None
    if plan.adapter:
        base_check = _check_base(shown, plan.base, plan.prepared.expected_base, plan.prepared.adapter_run)
    return base_check, markers


def _register(client, host: str, plan: DeployPlan, base_check, markers: list[str]) -> _Registered:
    """Upload the blobs, create the model, and make sure Ollama holds the TEMPLATE sent."""
    spec = plan.prepared.spec
    with ollama_client.talking_to(
        host,
        f"refused to register '{plan.name}'",
        with_status=True,
        hint=f"the Modelfile is at {plan.modelfile}; try `{plan.create_command}` to see Ollama's own message",
    ):
        digest = client.create_blob(spec.gguf) if spec.gguf is not None else None
        adapter_digest = client.create_blob(spec.adapter) if spec.adapter is not None else None
        request = mf.create_request(spec, digest, adapter_digest)
        statuses = [s.status for s in client.create(model=plan.name, stream=True, **request)]
    if not statuses or statuses[-1] != "success":
        raise LlmforgeError(
            f"Ollama at {host} did not finish registering '{plan.name}' (last status: {statuses[-1:] or 'none'})",
            hint=f"try `{plan.create_command}` by hand",
        )
    log.info("registered %s at %s (%s)", plan.name, host, ", ".join(statuses))
    _check_registered_template(client, plan.name, spec, host)
    return _Registered(host, digest, adapter_digest, base_check, markers)


def _result(plan: DeployPlan, registered: _Registered, check: dict[str, Any] | None) -> DeployResult:
    return DeployResult(
        name=plan.name, modelfile=plan.modelfile, create_command=plan.create_command, run_command=plan.run_command,
        gguf=plan.gguf, export_id=plan.export_id, family=plan.family, template_source=plan.template_source,
        template_status=plan.template_status, variant=plan.variant, caveats=plan.caveats, stop=plan.stop,
        parameters=plan.parameters, host=registered.host, digest=registered.digest,
        manifest=plan.modelfile.parent / "manifest.json", check=check, warnings=plan.warnings, kind=plan.kind,
        base=plan.base, adapter=plan.adapter, base_check=registered.base_check,
    )  # fmt: skip


def _write_manifest(result: DeployResult, plan: DeployPlan, registered: _Registered) -> None:
    """deploy/<name>/manifest.json: the source (what FROM and ADAPTER name, with digests), then what --json says."""
    p = plan.prepared
    source: dict[str, Any] = {"kind": result.kind}
    if p.spec.gguf is not None:
        source["gguf"] = {"path": str(p.spec.gguf), "digest": result.digest, "quant": p.quant}
    if result.base:
        source["base"] = result.base
    if p.spec.adapter is not None:
        source["adapter"] = {"path": str(p.spec.adapter), "digest": registered.adapter_digest}
        source["base_check"] = result.base_check
    atomic.write_json(
        result.manifest,
        manifest.build(
            "deploy", inputs={"modelfile": result.modelfile}, timer=p.timer, name=result.name, host=result.host,
            **source, export=result.export_id, family=result.family, variant=result.variant,
            template_source=result.template_source, template_status=result.template_status, caveats=result.caveats,
            stop=result.stop, parameters=result.parameters, check=result.check, warnings=result.warnings,
            config={"deploy": p.deploy.model_dump(mode="json")},
        ),
    )  # fmt: skip


def _record(result: DeployResult, plan: DeployPlan) -> None:
    check = result.check
    registry.record(
        plan.prepared.workspace.registry_file, "deployment", result.name, parent=result.export_id,
        source=result.kind, base=result.base, host=result.host, family=result.family, variant=result.variant,
        caveats=[c["id"] for c in result.caveats], quant=plan.prepared.quant, modelfile=str(result.modelfile),
        path=str(result.modelfile.parent),
        status="unchecked" if check is None else "complete" if check["ok"] else "check failed",
        check_ok=None if check is None else check["ok"],
    )  # fmt: skip
