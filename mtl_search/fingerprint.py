"""What a run was started with: a fingerprint of its spec and data, and the differences a resume must refuse.

A resumed search continues Optuna's study and ranks old and new trials together, so it is only sound with the
spec and the data the run started with. ``fingerprint.json`` (written when a run starts, copied into
``run.json`` when it ends) records the resolved spec and, for a data file, its path, size, modification time,
SHA-256 and columns; :func:`differences` says what changed since.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mtl_search.config import BUILTIN_PREFIX, ExperimentSpec

#: Spec keys that may differ on resume: where the result directory is (it may have moved).
MOVABLE_KEYS = ("output", "name")
_CHUNK = 1 << 20


def file_sha256(path: Path) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB pieces."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def fingerprint(spec: ExperimentSpec, columns: list[str]) -> dict[str, Any]:
    """The spec (as resolved, without where its results go) and the data it reads.

    Args:
        spec: the resolved spec (tasks written out).
        columns: the table's columns the run used (inputs and targets).
    """
    resolved = json.loads(spec.model_dump_json())
    for key in MOVABLE_KEYS:
        resolved.pop(key, None)
    source = spec.data.source
    data: dict[str, Any] = {"source": source, "columns": sorted(columns)}
    if not source.startswith(BUILTIN_PREFIX):  # a builtin is fixed by its name and params (in the spec)
        path = Path(source).resolve()
        stat = path.stat()
        data.update(path=str(path), bytes=stat.st_size, modified_ns=stat.st_mtime_ns, sha256=file_sha256(path))
    return {"spec": resolved, "data": data}


def _changes(old: Any, new: Any, key: str = "") -> list[str]:
    """``key: old -> new`` for each recorded setting whose value differs (mappings compared key by key)."""
    if isinstance(old, dict) and isinstance(new, dict) and old and new:
        # A key the record lacks is a setting a later mtl_search added (every setting is recorded, defaults too).
        return [line for name in old for line in _changes(old[name], new.get(name, "<absent>"), f"{key}{name}.")]
    if old == new:
        return []
    return [f"spec {key.rstrip('.')}: {_short(old)} -> {_short(new)}"]


def _short(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def differences(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """What changed between two fingerprints, one line each (empty: the same run).

    A data file whose modification time changed but whose bytes did not counts as the same, and so does a
    spec setting the record does not have (one a later version of mtl_search added, at its default).
    """
    lines = _changes(recorded.get("spec", {}), now.get("spec", {}))
    old_data, new_data = recorded.get("data", {}), now.get("data", {})
    for key in ("source", "path", "bytes"):
        if old_data.get(key) != new_data.get(key):
            lines.append(f"data {key}: {_short(old_data.get(key))} -> {_short(new_data.get(key))}")
    if old_data.get("bytes") == new_data.get("bytes") and old_data.get("sha256") != new_data.get("sha256"):
        lines.append("data contents: the file's bytes changed (SHA-256 differs), its size did not")
    added = sorted(set(new_data.get("columns", [])) - set(old_data.get("columns", [])))
    removed = sorted(set(old_data.get("columns", [])) - set(new_data.get("columns", [])))
    if added or removed:
        lines.append(f"data columns: {len(added)} added ({', '.join(added[:5])}), {len(removed)} removed "
                     f"({', '.join(removed[:5])})")
    return lines
