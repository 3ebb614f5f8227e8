"""Hugging Face dataset ids as inputs: a split read through the `datasets` library (its cache, HF_HUB_OFFLINE and
HF_TOKEN as the user has them set), written once as JSONL in that cache so the rest of `data` reads it like a file."""

from __future__ import annotations

import re
from pathlib import Path

from llmforge.config.data import HubConfig
from llmforge.errors import InputError, UsageError, require_extra
from llmforge.workspace import check_name

# owner/name as the Hub spells repository ids; a local path that exists always wins over this reading.
_HUB_ID = re.compile(r"^(hf:)?[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


def is_hub_id(spec: str) -> bool:
    """Whether an input that is not a local path names a Hub dataset (`owner/name`, or `hf:owner/name`)."""
    if not _HUB_ID.match(spec) or ".." in spec:
        return False
    return spec.startswith("hf:") or Path(spec).suffix.lower() not in (".jsonl", ".json", ".csv", ".tsv", ".parquet",
                                                                        ".txt", ".md", ".gz", ".ndjson")


def materialize(spec: str, hub: HubConfig) -> Path:
    """The split as a JSONL file in the datasets cache (written once per dataset fingerprint), one row a line."""
    repo = spec.removeprefix("hf:")
    # The id, subset and split name a folder and a file in the cache below: the workspace's rule for names holds
    check_name(repo.replace("/", "___"), "dataset id")
    check_name(hub.subset or "default", "data.hub.subset")
    check_name(hub.split, "data.hub.split")
    require_extra(f"reading the Hugging Face dataset {spec}", "train", "datasets")
    import datasets
    import orjson

    from llmforge import atomic

    where = f"{repo} (split {hub.split}" + (f", subset {hub.subset}" if hub.subset else "") + ")"
    offline = datasets.config.HF_HUB_OFFLINE
    # Its "using the latest cached version" notices and progress bars are what offline use looks like, not news.
    datasets.utils.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    try:
        ds = datasets.load_dataset(repo, hub.subset, split=hub.split, revision=hub.revision)
    except ValueError as exc:  # an unknown split or subset: datasets lists the ones there are
        raise UsageError(f"{where}: {str(exc).splitlines()[0]}", hint="set data.hub.split / data.hub.subset") from None
    except (ConnectionError, FileNotFoundError, datasets.exceptions.DatasetNotFoundError) as exc:
        hint = ("it is not in the local datasets cache and HF_HUB_OFFLINE=1: load it once on a connected machine, "
                "or copy its cache folder here" if offline else "check the id, your network and HF_TOKEN")  # fmt: skip
        raise InputError(f"{where}: cannot load the dataset ({type(exc).__name__}: {str(exc).splitlines()[0]})",
                         hint=hint) from None  # fmt: skip
    if not isinstance(ds, datasets.Dataset):
        raise UsageError(f"{where}: not a single split", hint="set data.hub.split")
    folder = Path(datasets.config.HF_DATASETS_CACHE) / "llmforge-jsonl" / repo.replace("/", "___") / (hub.subset or "default")
    out = folder / f"{hub.split}-{ds._fingerprint[:16]}.jsonl"
    if not out.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with atomic.atomic_path(out) as tmp, open(tmp, "wb") as fh:
            for row in ds:
                # Hub rows may hold dates, bytes or other non-JSON values: they become text, as a CSV would give them.
                fh.write(orjson.dumps(row, default=str) + b"\n")
    return out
