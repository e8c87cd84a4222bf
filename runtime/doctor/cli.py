"""`resonance doctor` (registration only: the checks import onnxruntime and friends when they run)."""

from __future__ import annotations

import argparse
import json

from resonance.cli_common import add_command

EXAMPLES = """\
  resonance doctor                                   # this machine, judged for the config that suits it
  resonance doctor --config jetson-orin-nano --models ~/bundles   # + load every bundle as serve would
  resonance doctor --config pc-cuda --json > doctor.json          # for scripts: exit 1 when it cannot run
each line: ✓ fine, ⚠ works but slower or less useful (with what to do), ✗ stops the config from running.
exit status: 0 when the config can run here, 1 when a ✗ line says it cannot, 2 for a bad option.
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "doctor",
        "check this machine: packages, onnxruntime providers, CUDA/cuDNN/TensorRT, Jetson, CPU, microphone, "
        "memory, bundles, network; each line with what to do",
        EXAMPLES,
        _run,
    )
    p.add_argument(
        "--config",
        help="device config to judge: a packaged name (pc-cpu, pc-cuda, jetson-orin-nano, jetson-agx-orin) or "
        "a YAML path (default: the one that suits this machine)",
    )
    p.add_argument(
        "--models",
        metavar="DIR",
        help="also load every bundle in DIR as `resonance serve --models DIR` would",
    )
    p.add_argument("--json", action="store_true", help="print the findings as JSON instead of lines")


def _run(args: argparse.Namespace) -> int:
    from resonance.runtime.doctor import run_doctor
    from resonance.runtime.doctor.checks import TOPICS
    from resonance.runtime.doctor.findings import format_report

    report = run_doctor(args.config, args.models)
    if args.json:
        print(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
    else:
        print(format_report(report, TOPICS))
    return report.exit_code()
