"""The base every config section shares: unknown keys are errors, defaults are validated too."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict

from llmforge.workspace import NAME_HINT, name_problem

# Upper bounds for integer fields: far beyond any real setting, yet small enough that an absurd value (a typo, a
# hostile file) fails validation with its dotted path instead of overflowing a C integer somewhere downstream.
SEED_MAX = 2**32 - 1  # numpy's seeds stop here
COUNT_MAX = 1_000_000_000  # steps, examples, intervals
TOKENS_MAX = 1 << 20  # sequence lengths, token limits, vocabulary sizes
CHARS_MAX = 1_000_000_000  # character lengths
DIM_MAX = 1 << 16  # hidden sizes, LoRA rank and alpha


class Section(BaseModel):
    """A config section. Unknown keys are errors (the loader turns them into did-you-mean messages)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, validate_assignment=True)


def _folder_name(value: str | None) -> str | None:
    # The same rule as every other name that becomes a path (workspace.name_problem), met here at load time so a
    # bad name fails before any stage creates or deletes anything.
    if value is not None:
        problem = name_problem(value)
        if problem is not None:
            raise ValueError(f"cannot be used as a name: {problem}; {NAME_HINT}")
    return value


def _ollama_folder_name(value: str | None) -> str | None:
    # An Ollama name may hold one namespace '/' and a ':tag'; its deploy/ folder replaces both with '_'.
    if value is not None:
        _folder_name(value.replace("/", "_").replace(":", "_"))
    return value


FolderName = Annotated[str, AfterValidator(_folder_name)]
OllamaName = Annotated[str, AfterValidator(_ollama_folder_name)]
