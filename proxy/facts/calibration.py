"""Per-model memory calibrations, learnt from ``/api/ps`` after loads and kept across restarts.

A calibration belongs to one model digest, parallel slot count, KV cache type, Ollama engine,
compute backend, flash attention setting and GPU count, so the key says all seven: each changes
what a load allocates beyond the formulas. The file is small JSON in the state directory, written atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import structlog

from policies.memory import Calibration

log = structlog.get_logger("ollama_governor.calibration")

FILENAME = "calibration.json"


CALIBRATION_MODEL = "m3"
"""Which memory model a calibration corrects. ``m3``: the fitted compute buffer, learning the real
allocation (``/api/ps`` size plus what it leaves out), per backend, flash attention and GPU count;
calibrations learnt by earlier models are not reused, since they corrected different errors."""


def calibration_key(
    digest: str,
    parallel: int,
    kv_cache_type: str,
    engine: str,
    backend: str = "cpu",
    *,
    flash_attention: bool = True,
    gpu_count: int = 1,
) -> str:
    """The key a calibration is stored under: one per model and per setting that changes what
    a load allocates beyond the formulas (``policies.memory.assumed_parts``)."""
    attention = "fa" if flash_attention else "nofa"
    parts = (digest, f"p{parallel}", kv_cache_type, engine, backend, attention, f"g{gpu_count}")
    return "|".join((*parts, CALIBRATION_MODEL))


class CalibrationBook:
    """Calibrations by key; ``save`` is blocking file I/O (run it in a thread)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._entries: dict[str, Calibration] = {}
        self._seen: set[tuple[str, int, int]] = set()
        if path is not None:
            self._load(path)

    def _load(self, path: Path) -> None:
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("calibration_unreadable", path=str(path), error=str(exc), action="starting afresh")
            return
        for key, text in data.items() if isinstance(data, dict) else ():
            try:
                self._entries[key] = Calibration.from_json(json.dumps(text))
            except ValueError as exc:
                log.warning("calibration_entry_skipped", key=key, error=str(exc))

    @property
    def revision(self) -> int:
        """Grows with each load learnt from: a key for what is derived from the calibrations."""
        return len(self._seen)

    def get(self, key: str) -> Calibration | None:
        """The calibration for ``key``, or None before its first load."""
        return self._entries.get(key)

    def observe(
        self, key: str, num_ctx: int, raw_bytes: int, reported_bytes: int, unreported_bytes: int = 0
    ) -> bool:
        """Learn from one load; False when this exact load was already counted.

        ``reported_bytes`` is ``/api/ps`` ``size``; ``unreported_bytes`` what it leaves out.
        """
        sample = (key, num_ctx, reported_bytes)
        if sample in self._seen or reported_bytes <= 0 or raw_bytes <= 0:
            return False
        self._seen.add(sample)
        before = self._entries.get(key) or Calibration()
        self._entries[key] = before.observe(
            num_ctx, raw_bytes, reported_bytes, unreported_bytes=unreported_bytes
        )
        log.info(
            "calibrated",
            key=key,
            num_ctx=num_ctx,
            estimated_bytes=before.apply(raw_bytes),
            reported_bytes=reported_bytes,
            unreported_bytes=unreported_bytes,
            offset_bytes=round(self._entries[key].offset_bytes),
            slope=round(self._entries[key].slope, 4),
        )
        return True

    def save(self) -> None:
        """Write every calibration atomically; a failure is logged, never raised."""
        if self.path is None:
            return
        data = {key: json.loads(cal.to_json()) for key, cal in self._entries.items()}
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".calibration-")
            with os.fdopen(fd, "w") as handle:
                json.dump(data, handle, indent=1, sort_keys=True)
            os.replace(tmp, self.path)
        except OSError as exc:
            log.warning("calibration_not_saved", path=str(self.path), error=str(exc))
