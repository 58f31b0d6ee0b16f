"""Medians across separate ``spreadqueue bench --json`` files (``--combine``).

Each file's figure for a case (its median, if that invocation repeated) becomes one
run of the combined result; the combined median is taken over those. Phases or cases
missing from some files are combined over the files that have them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .stats import median_of_runs

__all__ = ["combine"]


def combine(paths: Sequence[Path]) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(results, meta)`` combining the benchmark JSON files ``paths``."""
    loaded = [json.loads(Path(p).read_text()) for p in paths]
    if not loaded:
        raise ValueError("nothing to combine")
    results: dict[str, Any] = {}
    for doc in loaded:
        for phase, data in doc.items():
            if phase == "meta" or "cases" not in data:
                continue
            target = results.setdefault(
                phase, {"description": data.get("description", ""), "cases": {}}
            )
            for label, case in data["cases"].items():
                slot = target["cases"].setdefault(label, {"params": case["params"], "runs": []})
                slot["runs"].append(case["median"])
    for data in results.values():
        for case in data["cases"].values():
            case["median"] = median_of_runs(case["runs"])
    first = loaded[0].get("meta", {})
    meta = {
        **first,
        "repeat": len(loaded),
        "combined": [str(p) for p in paths],
        "started": [doc.get("meta", {}).get("started") for doc in loaded],
    }
    return results, meta
