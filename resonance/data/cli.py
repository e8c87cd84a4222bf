"""`resonance data check|convert|record`: the data group's actions (registration only: heavy imports happen
when a command runs). The group itself belongs to resonance/cli.py."""

from __future__ import annotations

import argparse
import json

from resonance.cli_common import add_command

CHECK_EXAMPLES = """\
  resonance data check my_data/            # table of problems + summary; exit 1 if any error
  resonance data check my_data/ --json     # the same, machine-readable
  resonance data check my_data/ --to-simplified   # labels in Traditional characters -> Simplified
"""

CONVERT_EXAMPLES = """\
  resonance data convert phone_recordings/ my_data/      # mp3/m4a/ogg/flac/wav -> 16 kHz mono WAV
  resonance data convert my_data/ my_data-16k/ --force   # replace an earlier conversion
  # without labels.json, texts come from file names: 001_我想喝水.m4a -> "我想喝水"
"""

RECORD_EXAMPLES = """\
  resonance data record --phrases phrases.txt --out my_data/             # one phrase per line
  resonance data record --phrases phrases.txt --out my_data/ --device 2 --seconds 6
  python -m sounddevice                                                  # list the device numbers
  # run the same command again to continue an interrupted session
"""


def register(data_sub: argparse._SubParsersAction) -> None:
    """Fill the `data` group."""
    check = add_command(
        data_sub, "check", "find problems in a dataset before training", CHECK_EXAMPLES, run_check
    )
    check.add_argument("data_dir", metavar="DIR", help="folder with labels.json and audio/")
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument(
        "--to-simplified",
        action="store_true",
        help="first rewrite labels.json with every text in Simplified characters (the original is kept as "
        "labels.traditional.json), then check",
    )

    convert = add_command(
        data_sub,
        "convert",
        "convert recordings (any format, rate, channels) into a new 16 kHz mono WAV dataset",
        CONVERT_EXAMPLES,
        run_convert,
    )
    convert.add_argument("src", metavar="SRC", help="folder with the recordings (never modified)")
    convert.add_argument(
        "dst", metavar="DST", help="new folder to write (must not exist or be empty, unless --force)"
    )
    # What refuse_to_overwrite(own=convert.json) and _refuse_added_files allow: a person's recordings never.
    convert.add_argument(
        "--force",
        action="store_true",
        help="replace DST if it is an earlier conversion (made by `data convert`: it has convert.json) and "
        "no file was added to it since; any other folder is refused, --force or not",
    )

    record = add_command(
        data_sub,
        "record",
        "record phrases with a microphone, one take at a time",
        RECORD_EXAMPLES,
        run_record,
    )
    record.add_argument("--phrases", required=True, help="text file, one phrase per line")
    record.add_argument("--out", required=True, help="dataset folder to add the recordings to")
    record.add_argument("--device", help="input device number or name (default: the system's microphone)")
    record.add_argument("--seconds", type=float, default=4.0, help="length of each take (default: 4)")


def run_check(args: argparse.Namespace) -> int:
    import sys

    from resonance.data.check import (
        TRADITIONAL_BACKUP,
        convert_labels_to_simplified,
        format_report,
        inspect_dataset,
    )

    if args.to_simplified:
        changed = convert_labels_to_simplified(args.data_dir)
        note = (
            f"converted {changed} label(s) to Simplified characters; the original labels.json is kept as "
            f"{TRADITIONAL_BACKUP}"
            if changed
            else "every label is already in Simplified characters: labels.json is unchanged"
        )
        print(note, file=sys.stderr)
    report = inspect_dataset(args.data_dir)
    if args.json:
        print(json.dumps(report.to_json(), ensure_ascii=False, indent=2))
    else:
        print(format_report(report))
    return 1 if report.errors else 0


def run_convert(args: argparse.Namespace) -> int:
    from resonance.data.convert import convert_dataset

    result = convert_dataset(args.src, args.dst, force=args.force, show_progress=True)
    print(
        f"converted {result.converted} recordings to {result.dst} (16 kHz mono 16-bit WAV), "
        f"{result.utterances} entries in labels.json"
    )
    if result.labels_from_names:
        print(
            f"{args.src} had no labels.json: the texts were taken from the file names (NNN_text.ext -> text)"
        )
    if result.skipped:
        shown = ", ".join(result.skipped[:5]) + (" …" if len(result.skipped) > 5 else "")
        print(f"not converted, because labels.json does not list them: {shown}")
    print(f"next: resonance data check {result.dst}")
    return 0


def run_record(args: argparse.Namespace) -> int:
    from pathlib import Path

    from resonance.data.labels import LABELS_FILE
    from resonance.data.record import microphone, read_phrases, record_session
    from resonance.fsutil import refuse_overlap

    # The phrase list may live in the dataset folder, but it cannot be labels.json, which record adds to.
    refuse_overlap(Path(args.out) / LABELS_FILE, "labels file", [("phrase list", args.phrases)])
    phrases = read_phrases(args.phrases)
    device = int(args.device) if args.device and args.device.isdigit() else args.device
    recorder = microphone(device)
    record_session(phrases, args.out, recorder, seconds=args.seconds)
    return 0
