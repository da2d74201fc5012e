"""Export the standard interfaces as JSON Schema, for clients in other languages."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel

from computenet import model

EXPORTED: list[type[BaseModel]] = [
    model.JobSpec,
    model.Job,
    model.Attempt,
    model.Pool,
    model.PoolInventory,
    model.Machine,
    model.Device,
    model.Provider,
    model.Heartbeat,
    model.TelemetrySample,
    model.UsageRecord,
    model.Report,
    model.Assignment,
    model.Problem,
    model.Token,
]


def schemas() -> dict[str, dict[str, object]]:
    return {m.__name__: m.model_json_schema() for m in EXPORTED}


def export(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in schemas().items():
        path = directory / f"{name}.schema.json"
        path.write_text(json.dumps(schema, indent=2, sort_keys=True) + "\n")
        written.append(path)
    return written
