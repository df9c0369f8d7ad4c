"""The base every settings section shares: unknown keys are errors, defaults are validated too."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Section(BaseModel):
    """One ``[section]`` of the settings (``FLEET_<SECTION>__<KEY>``)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)
