"""`llmforge deploy ollama`'s parts (the stage itself is deployment/stage.py): a Modelfile that matches training, registered through the official client, then checked.

The tokenizer's own template gets a verdict from chat_templates.deploy_verdict (by rendering probe conversations,
never from the model's name): 'exact', 'caveats' (named differences Ollama cannot reproduce, e.g. trims-whitespace,
drops-system, no-tools, date-format, reasoning-history, system-flags; each printed, and kept in --json, the manifest, the registry
and `deploy show`) or 'refused' (deploy stops with the reason). The matching family's Go template and every
end-of-turn and end-of-text token become TEMPLATE and PARAMETER stop. After registering, one chat request must answer, stop on its
own (done_reason "stop") and show no special token in its text; otherwise the deploy fails (exit 1).

Sources (stage.DeployPlan.kind): an export, any .gguf file (its embedded template judged the same way), a model already
in Ollama (`from`: FROM NAME keeps its template and stops), or a GGUF LoRA on its base (`adapter`: FROM BASE + ADAPTER,
refused unless /api/show of BASE reports the architecture and sizes the adapter was trained on).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmforge import chat_templates as ct
from llmforge import ollama_client, registry
from llmforge.config.deploy import DeployConfig
from llmforge.deployment import modelfile as mf
from llmforge.deployment.source import (
    GgufFacts,
    TrainingTokenizer,
    base_mismatches,
    choose_adapter,
    choose_gguf,
    expected_base,
    read_gguf,
    read_training_tokenizer,
    training_max_length,
)
from llmforge.errors import InputError, LlmforgeError, UsageError
from llmforge.workspace import Workspace

CHECK_PROMPT = "Hello! In one sentence, what can you help me with?"
CHECK_MAX_TOKENS = 256
# Ollama model names: [namespace/]name[:tag] of letters, digits, '.', '_' and '-'.
NAME_RE = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._-]*/)?[A-Za-z0-9][A-Za-z0-9._-]*(?::[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def folder_name(name: str) -> str:
    """deploy/<folder>/ for an Ollama name (a namespace '/' or tag ':' would make paths odd)."""
    return name.replace("/", "_").replace(":", "_")


def full_name(name: str) -> str:
    """Ollama stores `name` as `name:latest` when no tag is given."""
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def check_name(name: str) -> str:
    name = name.strip()
    if not NAME_RE.match(name):
        raise UsageError(
            f"'{name}' is not a valid Ollama model name",
            hint="use letters, digits, '.', '_' and '-', optionally namespace/ and :tag, e.g. --name support-bot",
        )
    return name


# ----------------------------------------------------------------------------------------------------------------
# Deciding what the Modelfile says
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class TemplateChoice:
    family: ct.Family | None
    ollama_template: str | None
    source: str
    warnings: list[str]
    status: str | None = None
    caveats: tuple[ct.Caveat, ...] = ()


def choose_template(setting: str, gguf: GgufFacts, tok: TrainingTokenizer) -> TemplateChoice:
    """deploy.template: 'auto' identifies the family from the model's own template; a family name forces it;
    'embedded' leaves TEMPLATE out. The training tokenizer's template wins over the GGUF's copy."""
    warnings: list[str] = []
    template = tok.chat_template or gguf.chat_template
    bos = tok.bos_token or gguf.bos_token
    eos = tok.eos_token or gguf.eos_token
    if tok.chat_template and gguf.chat_template and tok.chat_template.strip() != gguf.chat_template.strip():
        warnings.append(
            f"the GGUF's embedded chat template differs from the training tokenizer's ({tok.folder}); "
            "the Modelfile follows the training tokenizer"
        )
    setting = (setting or "auto").strip().lower()
    names = ", ".join(ct.FAMILIES)
    if setting == "embedded":
        warnings.append(
            "deploy.template is 'embedded': no TEMPLATE is written, so Ollama guesses one from the GGUF; "
            "it is not checked against training and may ramble or leak template tokens"
        )
        return TemplateChoice(None, None, "embedded", warnings)
    if setting != "auto":
        family = ct.get_family(setting)
        caveats = tuple(ct.caveat(c) for c in family.caveats)
        if template:
            verdict = ct.deploy_verdict(template, bos, eos)
            found = verdict.family
            if found is None or found.name != family.name or found.variant:
                seen = f"{found.name} ({found.variant})" if found and found.variant else found.name if found else None
                raise UsageError(
                    f"deploy.template is '{family.name}' but the model's own template "
                    + (
                        f"is {seen}, which renders differently"
                        if seen
                        else f"is none llmforge knows ({verdict.reason})"
                    ),
                    hint="set deploy.template: auto to deploy the model's own template"
                    + (f" ({verdict.status})" if seen else "")
                    + ", or deploy.template: embedded to let Ollama use the GGUF's own template (unchecked)",
                )
            caveats = verdict.caveats
        return TemplateChoice(family, family.ollama_template_for(eos), "configured", warnings, None, caveats)
    if not template:
        raise UsageError(
            "the model has no chat template (neither its tokenizer nor the GGUF carries one), "
            "so deploy cannot tell how conversations must be written",
            hint=f"set deploy.template: <family> (one of {names}) to the format it was trained with",
        )
    verdict = ct.deploy_verdict(template, bos, eos)
    if verdict.family is None:
        raise UsageError(
            f"the model's chat template is not one llmforge can reproduce in an Ollama TEMPLATE ({verdict.reason})",
            hint="deploy.template: embedded lets Ollama use the GGUF's own template (unchecked); a model trained "
            f"with model.chat_template: <family> ({names}) carries that family's template and deploys exactly",
        )
    family = verdict.family
    return TemplateChoice(
        family, family.ollama_template_for(eos), "identified", warnings, verdict.status, verdict.caveats
    )


def stop_tokens(family: ct.Family | None, gguf: GgufFacts, tok: TrainingTokenizer, extra: list[str]) -> list[str]:
    """Every end-of-turn and end-of-text token: the family's, the tokenizer's EOS, the GGUF's EOT/EOM and the
    eos_token_id(s) of generation_config.json, then deploy.parameters.stop."""
    eos = tok.eos_token or gguf.eos_token
    found: list[str] = list(family.stop_tokens) if family else []
    found += list(ct.end_of_turn_tokens_for(family, eos))
    found += [t for t in (eos, gguf.eos_token) if t]
    found += list(gguf.end_of_turn_tokens)
    found += [gguf.tokens[i] for i in tok.generation_eos_ids if 0 <= i < len(gguf.tokens)]
    found += extra
    return list(dict.fromkeys(t for t in found if t))


def leak_markers(family: ct.Family | None, gguf: GgufFacts, stops: list[str]) -> list[str]:
    """Strings that must never appear in an answer: the stop tokens, BOS/EOS and the vocabulary's control tokens."""
    found = list(stops) + [t for t in (gguf.bos_token, gguf.eos_token) if t]
    if family and family.bos_token:
        found.append(family.bos_token)
    found += [t for t in gguf.control_tokens if len(t) >= 2 and t.strip()]
    return list(dict.fromkeys(found))


def _license_text(value: str | None) -> str | None:
    if not value:
        return None
    path = Path(value)
    if "\n" not in value and len(value) < 4096 and path.is_file():
        return path.read_text(encoding="utf-8")
    return value


def _bos_check(family: ct.Family | None, gguf: GgufFacts, warnings: list[str]) -> None:
    """The family's Ollama template leaves BOS to llama.cpp (chat_templates docstring): the GGUF must add it."""
    if family is None or gguf.add_bos is None:
        return
    if family.bos_token and not gguf.add_bos:
        raise UsageError(
            f"the {family.name} template starts every prompt with {family.bos_token}, but the GGUF says "
            "add_bos_token=false, so under Ollama the model would never see it",
            hint="re-export the GGUF (llmforge export gguf --force) from a tokenizer that adds its BOS token",
        )
    if not family.bos_token and gguf.add_bos and gguf.bos_token:
        warnings.append(
            f"the GGUF adds {gguf.bos_token} before every prompt, which the {family.name} template never wrote in "
            "training"
        )


NO_GGUF = GgufFacts(None, None, (), None, None, (), None, None)


def _spec(
    deploy: DeployConfig,
    choice: TemplateChoice,
    meta: GgufFacts,
    tok: TrainingTokenizer,
    system: str | None,
    max_length: int | None,
    **source: Any,
) -> mf.ModelfileSpec:
    """The Modelfile for any source (`source`: gguf=, base=, adapter=): stops, parameters, SYSTEM and MESSAGEs.
    `meta` is the GGUF's metadata (NO_GGUF when FROM is a model in Ollama)."""
    params = mf.check_parameters(dict(deploy.parameters))
    stops = stop_tokens(choice.family, meta, tok, params.pop("stop", []))
    if "num_ctx" not in params and max_length:
        params["num_ctx"] = min(max_length, meta.context_length) if meta.context_length else max_length
    system_text = system if system is not None else deploy.system
    messages = mf.check_messages(list(deploy.messages))
    if choice.family is not None and not choice.family.supports_system:
        if system_text or any(m["role"] == "system" for m in messages):
            raise UsageError(
                f"the {choice.family.name} chat template has no system role, so a system prompt would be dropped",
                hint="remove deploy.system / --system (and system MESSAGEs), or put the instruction in a user turn",
            )
    return mf.ModelfileSpec(
        gguf=source.pop("gguf", None),
        template=choice.ollama_template,
        system=system_text or None,
        stop=stops,
        parameters=params,
        messages=messages,
        license=_license_text(deploy.license),
        notes=[f"caveat {c.id}: {c.text}" for c in choice.caveats],
        **source,
    )


def _facts(choice: TemplateChoice, warnings: list[str], markers: list[str], **source: Any) -> dict[str, Any]:
    return {
        "family": choice.family,
        "template_source": choice.source,
        "template_status": choice.status,
        "caveats": [c.to_dict() for c in choice.caveats],
        "warnings": warnings,
        "leak_markers": markers,
        **source,
    }


def plan_export(
    deploy: DeployConfig, workspace: Workspace, *, export: str | None, quant: str | None, system: str | None
) -> tuple[mf.ModelfileSpec, dict[str, Any]]:
    """An export or a .gguf file: everything short of writing and registering: the Modelfile spec and the facts for manifest and checks."""
    chosen = choose_gguf(workspace, export, quant or deploy.quant)
    gguf = read_gguf(chosen.path)
    tok = read_training_tokenizer(chosen.model_dirs)
    choice = choose_template(deploy.template, gguf, tok)
    warnings = list(choice.warnings)
    if chosen.verified is False:
        warnings.append(f"{chosen.path.name} was not verified against the original model at export")
    _bos_check(choice.family, gguf, warnings)
    spec = _spec(deploy, choice, gguf, tok, system, training_max_length(workspace, chosen.run), gguf=chosen.path)
    kind = "gguf" if chosen.run is None else "export"
    facts = _facts(
        choice, warnings, leak_markers(choice.family, gguf, spec.stop), kind=kind, parent=chosen.export_id,
        gguf=chosen.path, quant=chosen.quant,
    )  # fmt: skip
    return spec, facts


def plan_from(deploy: DeployConfig, *, base: str, system: str | None) -> tuple[mf.ModelfileSpec, dict[str, Any]]:
    """FROM a model already in Ollama: it keeps its own TEMPLATE and stops (nothing here says how it was trained);
    the Modelfile adds SYSTEM, PARAMETERs and MESSAGEs. A family in deploy.template replaces its TEMPLATE."""
    setting = (deploy.template or "auto").strip().lower()
    if setting in ("auto", "embedded"):
        choice = TemplateChoice(None, None, "inherited", [])
    else:
        choice = choose_template(setting, NO_GGUF, TrainingTokenizer())
    spec = _spec(deploy, choice, NO_GGUF, TrainingTokenizer(), system, None, base=base)
    facts = _facts(choice, list(choice.warnings), list(spec.stop), kind="from", parent=f"ollama:{base}", base=base)
    return spec, facts


def plan_adapter(
    deploy: DeployConfig, workspace: Workspace, *, run: str, base: str, system: str | None
) -> tuple[mf.ModelfileSpec, dict[str, Any]]:
    """FROM the base in Ollama + ADAPTER the run's GGUF LoRA, under the template the run was trained with (its
    tokenizer's, judged like an export's); with no template recorded, the base keeps its own (warned)."""
    chosen = choose_adapter(workspace, run)
    tok = read_training_tokenizer(chosen.model_dirs)
    setting = (deploy.template or "auto").strip().lower()
    warnings: list[str] = []
    if setting == "auto" and not tok.chat_template:
        choice = TemplateChoice(None, None, "inherited", [])
        warnings.append(
            f"the run '{run}' records no chat template, so the model keeps the TEMPLATE of '{base}'; "
            "it is not checked against training"
        )
    elif setting == "embedded":
        choice = TemplateChoice(None, None, "inherited", [])
    else:
        choice = choose_template(setting, NO_GGUF, tok)
    warnings += choice.warnings
    if chosen.verified is False:
        warnings.append(f"{chosen.path.name} was not verified against the base model at export")
    spec = _spec(
        deploy, choice, NO_GGUF, tok, system, training_max_length(workspace, run), base=base, adapter=chosen.path
    )
    facts = _facts(
        choice, warnings, list(spec.stop), kind="adapter", parent=chosen.export_id, base=base, adapter=chosen.path,
        expected_base=expected_base(chosen),
    )  # fmt: skip
    return spec, facts


# ----------------------------------------------------------------------------------------------------------------
# Talking to Ollama: the steps of stage.run
# ----------------------------------------------------------------------------------------------------------------


def _registered_names(client, host: str) -> set[str]:
    with ollama_client.talking_to(host, "answered GET /api/tags with an error"):
        listing = client.list()
    return {m.model for m in listing.models if m.model}


def _show_base(client, host: str, base: str):
    """/api/show of the model FROM names; a model Ollama does not have is the user's to pull."""
    try:
        with ollama_client.talking_to(host, f"cannot show '{base}'"):
            return client.show(base)
    except ollama_client.Refused as e:
        if not e.missing:
            raise
        raise UsageError(
            f"Ollama at {host} has no model '{base}' to build on",
            hint=f"pull it first: ollama pull {base}   (or name one `ollama list` shows)",
        ) from None


def _parameter_stops(parameters: str) -> list[str]:
    """The stop strings in /api/show's `parameters` text (one `name value` line each, strings JSON-quoted)."""
    import json

    stops = []
    for line in parameters.splitlines():
        key, _, value = line.strip().partition(" ")
        if key == "stop" and value.strip():
            value = value.strip()
            try:
                value = json.loads(value)
            except ValueError:
                pass
            if isinstance(value, str) and value:
                stops.append(value)
    return stops


def _check_base(shown, base: str, expected: dict[str, Any], run: str) -> dict[str, Any]:
    """The base in Ollama must be the model the adapter was trained on; refuse (UsageError) when it is not."""
    info = dict(shown.modelinfo or {})
    details = shown.details
    problems = base_mismatches(expected, info)
    compared = sorted(k for k in expected if info.get(k) not in (None, []))
    report = {
        "base": base,
        "compared": compared,
        "expected": {k: v for k, v in expected.items()},
        "parameter_size": getattr(details, "parameter_size", None),
        "quantization_level": getattr(details, "quantization_level", None),
        "problems": problems,
    }
    if problems:
        size = f" ({report['parameter_size']})" if report["parameter_size"] else ""
        raise UsageError(
            f"'{base}'{size} in Ollama is not the model the adapter of '{run}' was trained on: " + "; ".join(problems),
            hint=f"pass --from the Ollama model of the same base, or merge the adapter into a full model instead: "
            f"llmforge export gguf {run}, then llmforge deploy ollama {run}",
        )
    if "general.architecture" not in compared:
        raise UsageError(
            f"Ollama's /api/show for '{base}' reports no general.architecture, so the adapter's base cannot be checked",
            hint="upgrade Ollama, or merge the adapter into a full model: llmforge export gguf " + run,
        )
    return report


def _check_registered_template(client, name: str, spec: mf.ModelfileSpec, host: str) -> None:
    """Ollama must hold the TEMPLATE we sent (a server that ignores the field would silently guess its own)."""
    if spec.template is None:
        return
    with ollama_client.talking_to(host, "cannot show the model it just registered"):
        registered = client.show(name).template or ""
    if registered != spec.template:
        raise LlmforgeError(
            f"Ollama at {host} registered '{name}' with a different TEMPLATE than the one sent "
            f"({len(registered)} characters instead of {len(spec.template)})",
            hint="the server may predate the template field of /api/create: upgrade Ollama, or register by hand "
            f"with `ollama create {name} -f <the Modelfile>`; `llmforge deploy remove {name}` cleans up",
        )


def check_deployment(client, name: str, spec: mf.ModelfileSpec, markers: list[str]) -> dict[str, Any]:
    """Chat once (streaming, greedy): the model must answer, stop by itself and leak no special token."""
    content, done_reason, done = "", None, False
    try:
        with ollama_client.talking_to("", "chat"):
            for part in client.chat(
                model=name,
                messages=[{"role": "user", "content": CHECK_PROMPT}],
                stream=True,
                options={"temperature": 0, "num_predict": CHECK_MAX_TOKENS, "seed": 0},
            ):
                content += part.message.content or ""
                if part.done:
                    done, done_reason = True, part.done_reason
    except ollama_client.Refused as e:
        return {"ok": False, "problem": f"the chat request failed: {e.detail}", "content": content}
    except ollama_client.Unreachable as e:
        return {"ok": False, "problem": f"the chat request broke off ({e.cause})", "content": content}
    leaked = [m for m in markers if m in content]
    shown = content if len(content) <= 160 else content[:160] + "..."
    problem = None
    if not done:
        problem = "the chat stream ended without a final done message"
    elif leaked:
        problem = f"template tokens leaked into the answer ({', '.join(leaked)}): {shown!r}"
    elif done_reason != "stop":
        problem = (
            f"it did not stop by itself within {CHECK_MAX_TOKENS} tokens (done_reason {done_reason!r}): the end-of-turn "
            f"token is never produced or not recognised; stops were {spec.stop}; it wrote {shown!r}"
        )
    elif not content.strip():
        problem = "it answered with empty text"
    return {
        "ok": problem is None,
        "problem": problem,
        "prompt": CHECK_PROMPT,
        "content": content,
        "done_reason": done_reason,
        "leaked": leaked,
    }


# ----------------------------------------------------------------------------------------------------------------
# list / show / remove
# ----------------------------------------------------------------------------------------------------------------


def _manifest_of(workspace: Workspace, name: str) -> dict[str, Any] | None:
    path = workspace.deploy_dir(folder_name(name)) / "manifest.json"
    if not path.is_file():
        return None
    import json

    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise InputError(f"{path}: invalid JSON", hint="remove the folder and deploy again") from None


def list_deployments(workspace: Workspace) -> list[dict[str, Any]]:
    """Deployments recorded in this workspace, oldest first, with their lineage."""
    rows = []
    for entry in registry.read(workspace.registry_file):
        if entry.get("kind") != "deployment":
            continue
        chain = [f"{e['kind']}:{e['id']}" for e in registry.lineage(workspace.registry_file, entry["id"])]
        parent = entry.get("parent")
        if parent and len(chain) == 1:  # made from something outside the registry: a GGUF file or a model in Ollama
            chain.insert(0, parent if parent.startswith("ollama:") else f"gguf:{parent}")
        if entry.get("source") == "adapter" and entry.get("base"):
            chain.insert(len(chain) - 1, f"ollama:{entry['base']}")  # the adapter runs on this base
        rows.append(
            {
                "name": entry["id"],
                "kind": entry.get("source") or "export",
                "base": entry.get("base"),
                "export": parent,
                "host": entry.get("host"),
                "family": entry.get("family"),
                "variant": entry.get("variant") or "",
                "caveats": list(entry.get("caveats") or []),
                "quant": entry.get("quant"),
                "check_ok": entry.get("check_ok"),
                "recorded_at": entry.get("recorded_at"),
                "modelfile": entry.get("modelfile"),
                "lineage": chain,
            }
        )
    return rows


def show_deployment(workspace: Workspace, name: str, *, host: str | None = None) -> dict[str, Any]:
    """The recorded deployment (manifest, Modelfile, lineage) and, when Ollama answers, what it has registered."""
    entry = next((r for r in list_deployments(workspace) if r["name"] == name), None)
    recorded = _manifest_of(workspace, name)
    if entry is None and recorded is None:
        known = ", ".join(r["name"] for r in list_deployments(workspace)) or "none"
        raise UsageError(
            f"no deployment named '{name}' in this workspace (deployments: {known})",
            hint="list them with: llmforge deploy list",
        )
    modelfile = workspace.deploy_dir(folder_name(name)) / "Modelfile"
    info: dict[str, Any] = {
        "name": name,
        "record": entry,
        "manifest": recorded,
        "modelfile": modelfile.read_text(encoding="utf-8") if modelfile.is_file() else None,
    }
    target = ollama_client.resolve_host(host or (entry or {}).get("host") or (recorded or {}).get("host"))
    info["ollama"] = _ollama_view(target, name)
    return info


def _ollama_view(host: str, name: str) -> dict[str, Any]:
    client = ollama_client.connect(
        host, timeout=ollama_client.LOOKUP_TIMEOUT, connect_timeout=ollama_client.CONNECT_TIMEOUT
    )
    try:
        with ollama_client.talking_to(host, f"cannot show '{name}'"):
            shown = client.show(name)
    except ollama_client.Refused as e:
        if e.missing:
            return {"host": host, "registered": False}
        return {"host": host, "registered": None, "error": e.detail}
    except ollama_client.Unreachable as e:
        return {"host": host, "registered": None, "error": f"unreachable ({e.cause})"}
    return {"host": host, "registered": True, "template": shown.template, "parameters": shown.parameters}


def remove_deployment(workspace: Workspace, name: str, *, host: str | None = None) -> dict[str, Any]:
    """Delete the model from Ollama (a model Ollama no longer has is fine) and forget it in the workspace."""
    import shutil

    entry = next((r for r in list_deployments(workspace) if r["name"] == name), None)
    recorded = _manifest_of(workspace, name)
    folder = workspace.deploy_dir(folder_name(name))
    if entry is None and recorded is None and not folder.exists():
        raise UsageError(f"no deployment named '{name}' in this workspace", hint="list them with: llmforge deploy list")
    target = ollama_client.resolve_host(host or (entry or {}).get("host") or (recorded or {}).get("host"))
    client = ollama_client.connect(
        target, timeout=ollama_client.LOOKUP_TIMEOUT, connect_timeout=ollama_client.CONNECT_TIMEOUT
    )
    try:
        with ollama_client.talking_to(target, f"refused to delete '{name}'"):
            client.delete(name)
        deleted = True
    except ollama_client.Refused as e:
        if not e.missing:
            raise
        deleted = False
    shutil.rmtree(folder, ignore_errors=True)
    registry.forget(workspace.registry_file, "deployment", name)
    return {"name": name, "host": target, "deleted_from_ollama": deleted, "removed_folder": str(folder)}
