"""The JSON Schema of the journey language, for editors (VS Code's YAML extension) and tools."""

from __future__ import annotations

from typing import Any

from engine.spec import Document

__all__ = ["SCHEMA_ID", "json_schema"]

SCHEMA_ID = "https://journeys.dev/schema/journeys-v1.json"


def json_schema() -> dict[str, Any]:
    """The schema of a journeys file, with every model's description for completion popups."""
    schema = Document.model_json_schema(by_alias=True, mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = SCHEMA_ID
    schema["title"] = "journeys.yaml"
    properties = schema.setdefault("properties", {})
    properties["include"] = {
        "description": "Further journeys files to merge (glob patterns relative to this file).",
        "type": "array",
        "items": {"type": "string"},
    }
    schema["additionalProperties"] = False
    return schema
