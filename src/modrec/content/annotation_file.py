"""`AnnotationFile`: results kept as JSON lines, one finished record per key, appended
whole as each is made: what a resumable job writes. The language-model annotations
(`modrec.content.annotate`) and the computed item columns (`modrec.content.columns`)
are both such files.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from modrec.atomic import append_line

log = logging.getLogger(__name__)


class AnnotationFile:
    """JSON lines, one finished record per key. Records are appended whole
    (`modrec.atomic.append_line`); a torn last line from a killed job is skipped on
    reading, and the key's record is asked for again."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def records(self) -> dict[str, dict[str, Any]]:
        found: dict[str, dict[str, Any]] = {}
        if not self.path.exists():
            return found
        for number, line in enumerate(self.path.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                found[str(record["key"])] = record
            except (ValueError, KeyError, TypeError):
                log.warning("%s:%d: unreadable record skipped (an interrupted write); its "
                            "item is annotated again", self.path, number)
        return found

    def append(self, record: dict[str, Any]) -> None:
        append_line(self.path, json.dumps(record, ensure_ascii=False, allow_nan=False))
