"""Access to the JSON Schemas shipped as package data in ``daemon/schemas/``."""

from __future__ import annotations

import json
from importlib import resources
from typing import Any, Final

SCHEMA_NAMES: Final = ("detections", "events", "snapshot", "state", "stats", "status")


def load_schema(name: str) -> dict[str, Any]:
    """JSON Schema (2020-12) of one of ``SCHEMA_NAMES``."""
    if name not in SCHEMA_NAMES:
        raise ValueError(f"unknown payload schema {name!r}; known: {', '.join(SCHEMA_NAMES)}")
    text = resources.files("daemon").joinpath("schemas", f"{name}.schema.json").read_text("utf-8")
    schema: dict[str, Any] = json.loads(text)
    return schema
