"""`resonance doctor`: can this machine run a device config? One line per finding, ✓ / ⚠ / ✗, with what to do.

Torch-free and Python-3.8-clean: it runs on a Jetson with only the runtime installed. Three parts:

* ``machine.py`` reads facts (installed packages, onnxruntime's build, shared libraries, /proc, devices) and
  judges nothing, so tests replace it with a fake machine;
* ``checks.py`` judges them: each check is a small function ``(machine, context) -> [Finding]`` listed in
  ``CHECKS``, so a new check (the server's certificate, once HTTPS exists) is one function and one line;
* ``findings.py`` holds the result types and prints them; ``--json`` writes the same as JSON.

Usage::

    from resonance.runtime.doctor import run_doctor
    report = run_doctor("jetson-orin-nano", models="bundles")
    print(report.can_run, [f.message for f in report.findings])
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Optional, Union

from resonance.runtime.doctor.findings import FAIL, INFO, OK, WARN, Finding, Report

__all__ = ["FAIL", "INFO", "OK", "WARN", "Finding", "Report", "run_doctor"]

log = logging.getLogger(__name__)


def run_doctor(
    config: Optional[str] = None, models: Union[str, Path, None] = None, machine: Any = None
) -> Report:
    """Run every check against device config ``config`` (a packaged name or a YAML path; None: the one that
    suits this machine) and, with ``models``, the bundles in that folder."""
    from resonance.runtime.device_config import list_device_configs, load_device_config
    from resonance.runtime.doctor.checks import CHECKS, Context, choose_config
    from resonance.runtime.doctor.machine import Machine

    machine = Machine() if machine is None else machine
    if config is None:
        config, why = choose_config(machine)
    else:
        why = "--config"
    context = Context(
        config=load_device_config(config),  # a bad name or file is the usual error (exit 2), not a finding
        configs={name: load_device_config(name) for name in list_device_configs()},
        models=Path(models) if models is not None else None,
    )
    findings = []
    for check in CHECKS:
        try:
            findings += check(machine, context)
        except Exception as exc:  # a doctor that crashes on an odd machine helps nobody; keep the traceback
            log.debug("check %s failed", check.__name__, exc_info=True)
            findings.append(
                Finding("doctor", WARN, f"{check.__name__} could not finish: {type(exc).__name__}: {exc}")
            )
    return Report(context.config.name, why, findings)
