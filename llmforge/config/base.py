"""The base every config section shares: unknown keys are errors, defaults are validated too."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """A config section. Unknown keys are errors (the loader turns them into did-you-mean messages)."""

    model_config = ConfigDict(extra="forbid", validate_default=True, validate_assignment=True)
