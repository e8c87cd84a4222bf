"""What a check found: one line, ✓ / ⚠ / ✗, and what to do about it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Sequence

OK, WARN, FAIL, INFO = "ok", "warn", "fail", "info"
# ✗ only for what stops the judged device config from running; ⚠ for what makes it slower or less useful
# (a GPU provider falling back to the CPU still serves); · for facts about other device configs.
SYMBOLS = {OK: "✓", WARN: "⚠", FAIL: "✗", INFO: "·"}


@dataclass(frozen=True)
class Finding:
    topic: str  # the section it is printed under: "packages", "onnxruntime", "gpu", ...
    status: str  # OK | WARN | FAIL | INFO
    message: str  # what was found, one line
    fix: str = ""  # what to do: the exact command where there is one; "" when nothing needs doing
    data: Dict[str, Any] = field(default_factory=dict)  # the facts behind it, for --json

    def __post_init__(self) -> None:
        if self.status not in SYMBOLS:
            raise ValueError(f"unknown status {self.status!r}")

    def to_json(self) -> Dict[str, Any]:
        return {
            "topic": self.topic,
            "status": self.status,
            "message": self.message,
            "fix": self.fix,
            **self.data,
        }


@dataclass(frozen=True)
class Report:
    config: str  # the device config judged
    config_source: str  # why that one: "--config" or how it was chosen
    findings: List[Finding]

    def count(self, status: str) -> int:
        return sum(1 for f in self.findings if f.status == status)

    @property
    def can_run(self) -> bool:
        """The judged device config can run here: nothing stops it (warnings may slow it down)."""
        return self.count(FAIL) == 0

    def exit_code(self, strict: bool = False) -> int:
        bad = self.count(FAIL) + (self.count(WARN) if strict else 0)
        return 0 if bad == 0 else 1

    def to_json(self) -> Dict[str, Any]:
        return {
            "config": self.config,
            "config_source": self.config_source,
            "can_run": self.can_run,
            "counts": {status: self.count(status) for status in SYMBOLS},
            "findings": [f.to_json() for f in self.findings],
        }


def format_report(report: Report, topics: Sequence[str]) -> str:
    """Findings grouped by topic (in ``topics`` order), the fix indented under each, then the verdict."""
    lines = [
        f"resonance doctor: can this machine run device config '{report.config}'? ({report.config_source})"
    ]
    for topic in topics:
        found = [f for f in report.findings if f.topic == topic]
        if not found:
            continue
        lines.append("")
        lines.append(topic)
        for finding in found:
            lines.append(f"  {SYMBOLS[finding.status]} {finding.message}")
            if finding.fix:
                lines.append(f"      → {finding.fix}")
    warnings, failures = report.count(WARN), report.count(FAIL)
    lines.append("")
    if report.can_run:
        extra = f", {warnings} warning(s) above" if warnings else ""
        lines.append(f"result: '{report.config}' can run here{extra}")
    else:
        lines.append(f"result: '{report.config}' cannot run here: fix the {failures} ✗ line(s) above")
    return "\n".join(lines)
