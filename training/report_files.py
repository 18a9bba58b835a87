"""An evaluation's result as the two files a report keeps: `NAME-SPLIT.json` (every figure) and
`NAME-SPLIT.md` (the table a person reads), written the same way for every `seesku eval` command."""

from __future__ import annotations

import json
from pathlib import Path


def write_result(result: dict, table: str, out: Path, name: str, split: str) -> Path:
    """Write both files into `out`; returns the table's path."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}-{split}.json").write_text(json.dumps(result, indent=2) + "\n")
    path = out / f"{name}-{split}.md"
    path.write_text(table)
    return path
