"""Issue #12's "never lose data" cases, run through the real command line on a scratch copy, as a table.

Each case sets up a patient's data (recordings, an adapter, a folder of the user's) in a scratch folder, runs
one clumsy `resonance` command on it in a subprocess -- the mistakes that used to delete recordings or an
adapter -- and counts the bytes of the user's data before and after. A file counts as kept when its bytes are
unchanged, or, for a labels.json, when the new file still starts with every byte of the old one up to its
closing bracket (`data record` appends). Target: 0 bytes lost, every refusal exit 2 with one line of what to do.

    python -m resonance.data.safety_probe                        # fast cases, a fake adapter
    python -m resonance.data.safety_probe --base-model models/whisper-base   # + a real adapter, trained

With ``--base-model`` (a local Hugging Face Whisper folder) the export cases use a real adapter trained for one
step, so a command that did not refuse would really run and really replace it. The runs only ever write under
the scratch folder. ``--python`` runs another installation's `resonance` (e.g. an older release, to compare).
Standard library only, and the commands are subprocesses: this module imports no layer above the data.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

DEMO_TAKE = Path(__file__).resolve().parents[1] / "demo_data" / "take1"
MESSAGE_CHARS = 150  # of the error line, in the table
STEP_TIMEOUT_S = 600  # one command; the refusals take about a second, a one-step tiny training a minute


@dataclass(frozen=True)
class Case:
    name: str  # what the clumsy user did
    args: Callable[[Scratch], List[str]]  # the `resonance` arguments, given the scratch folder
    protected: Callable[[Scratch], List[Path]]  # the user's data that must survive it
    needs_model: bool = False  # runs only with --base-model (a real adapter)
    setup: Optional[Callable[[Scratch], None]] = None  # what the case adds to the fresh scratch folder


@dataclass(frozen=True)
class CaseResult:
    name: str
    command: str
    exit_code: int
    bytes_before: int
    bytes_kept: int
    seconds: float
    message: str  # the first line of the error, or of the output

    @property
    def bytes_lost(self) -> int:
        return self.bytes_before - self.bytes_kept


class Scratch:
    """The folders a case works on: a dataset, a second dataset the person recorded, a folder of documents,
    an adapter, and a place for new outputs."""

    def __init__(self, root: Path, python: str, base_model: Optional[Path]) -> None:
        self.root, self.python, self.base_model = root, python, base_model
        self.data = root / "patients" / "grandpa" / "recordings"
        self.recorded = root / "patients" / "grandpa" / "more-recordings"
        self.documents = root / "documents"
        self.adapter = root / "adapters" / "grandpa"

    def reset(self) -> None:
        """A fresh copy of everything, so one case cannot hide another's damage."""
        for child in self.root.iterdir():
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
        shutil.copytree(DEMO_TAKE, self.data)
        _extra_keys(self.data / "labels.json")
        shutil.copytree(DEMO_TAKE, self.recorded)
        self.documents.mkdir(parents=True)
        (self.documents / "letter-to-the-doctor.txt").write_text("Dear doctor, …\n" * 200, encoding="utf-8")
        (self.documents / "photo.jpg").write_bytes(os.urandom(50_000))
        if self.base_model is None:
            _fake_adapter(self.adapter)
        else:
            self.adapter.parent.mkdir(parents=True)
            shutil.copytree(_trained_adapter(self), self.adapter)

    def out(self, name: str) -> Path:
        return self.root / "new" / name

    def quick_training(self) -> List[str]:
        """With a base model, options that make a training really run (one step): a command that failed to
        refuse would then really replace its --out. Without one, the default base model is not reachable
        offline, so only a refusal is measured."""
        if self.base_model is None:
            return []
        steps = ("--max-steps", "1", "--batch-size", "4", "--window-seconds", "5", "--val-fraction", "0.2")
        return ["--base-model", str(self.base_model), *steps]


def _extra_keys(labels: Path) -> None:
    """Entries with keys a person or another tool added: `data record` must keep them byte for byte."""
    entries = json.loads(labels.read_text(encoding="utf-8"))
    for index, entry in enumerate(entries):
        entry.update({"speaker": "grandpa", "split": "train" if index % 5 else "test", "notes": {"take": 1}})
    labels.write_text(json.dumps(entries, ensure_ascii=True, indent=1) + "\n", encoding="utf-8")


def _fake_adapter(folder: Path) -> None:
    """An adapter folder's files (what `train` writes), with placeholder weights."""
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 16}\n', encoding="utf-8")
    (folder / "adapter_model.safetensors").write_bytes(os.urandom(200_000))
    (folder / "train_config.json").write_text('{"base_model": "pypi:whisper-base"}\n', encoding="utf-8")
    (folder / "report.json").write_text('{"improved": true}\n', encoding="utf-8")


_TRAINED: Dict[str, Path] = {}


def _trained_adapter(scratch: Scratch) -> Path:
    """A real adapter of the base model (one training step), made once per probe outside the cases' folders."""
    key = str(scratch.base_model)
    if key not in _TRAINED:
        made = scratch.root.parent / "trained-adapter"
        if not made.exists():
            _resonance(
                scratch.python,
                ["train", "--data", str(DEMO_TAKE), "--out", str(made), *scratch.quick_training()],
                scratch.root,
                check=True,
            )
        _TRAINED[key] = made
    return _TRAINED[key]


def _recorded_take_script() -> str:
    """`data record` into an existing dataset, with a scripted microphone and keyboard (no sound card)."""
    return (
        "import sys, numpy as np\n"
        "from resonance.data.record import record_session\n"
        "t = np.arange(48000) / 16000\n"
        "take = np.r_[np.zeros(8000), 0.3 * np.sin(2 * np.pi * 220 * t), np.zeros(8000)].astype('float32')\n"
        "keys = iter(['', '', 'q'])\n"
        "record_session(['新的一句'], sys.argv[1], lambda s: take, ask=lambda p: next(keys), say=print)\n"
    )


CASES: List[Case] = [
    Case(
        "train into the data folder, --force",
        lambda s: ["train", "--data", str(s.data), "--out", str(s.data), "--force", *s.quick_training()],
        lambda s: [s.data],
    ),
    Case(
        "train into the folder above the data, --force",
        lambda s: [
            "train",
            "--data",
            str(s.data),
            "--out",
            str(s.data.parent),
            "--force",
            *s.quick_training(),
        ],
        lambda s: [s.data.parent],
    ),
    Case(
        "train over a folder of documents, --force",
        lambda s: ["train", "--data", str(s.data), "--out", str(s.documents), "--force", *s.quick_training()],
        lambda s: [s.documents, s.data],
    ),
    Case(
        "train, --resume from a damaged checkpoint",
        lambda s: ["train", "--data", str(s.data), "--out", str(s.out("a")), "--resume"],
        lambda s: [s.data],
        setup=lambda s: _write(s.out("a.partial") / "checkpoint.pt", b"PK\x03\x04" + os.urandom(5000)),
    ),
    Case(
        "export onto its adapter, --force",
        lambda s: ["export", "--adapter", str(s.adapter), "--out", str(s.adapter), "--force"],
        lambda s: [s.adapter],
    ),
    Case(
        "export into the adapter's parent, --force",
        lambda s: ["export", "--adapter", str(s.adapter), "--out", str(s.adapter.parent), "--force"],
        lambda s: [s.adapter.parent],
    ),
    Case(
        "export over a folder of documents, --force",
        lambda s: ["export", "--adapter", str(s.adapter), "--out", str(s.documents), "--force"],
        lambda s: [s.documents, s.adapter],
    ),
    Case(
        "export over the recordings, --force (real adapter)",
        lambda s: ["export", "--adapter", str(s.adapter), "--out", str(s.data), "--force"],
        lambda s: [s.data, s.adapter],
        needs_model=True,
    ),
    Case(
        "data convert over recorded takes, --force",
        lambda s: ["data", "convert", str(s.data), str(s.recorded), "--force"],
        lambda s: [s.recorded, s.data],
    ),
    Case(
        "data convert into the folder above the source, --force",
        lambda s: ["data", "convert", str(s.data), str(s.data.parent), "--force"],
        lambda s: [s.data.parent],
    ),
    Case(
        "eval curve into the data folder",
        lambda s: [
            *("eval", "curve", "--data", str(s.data), "--eval-data", str(s.recorded), "--out", str(s.data)),
            *("--sizes", "8", *s.quick_training()),
        ],
        lambda s: [s.data, s.recorded],
    ),
    Case(
        "model import-ct2 onto its source, --force",
        lambda s: ["model", "import-ct2", str(s.out("ct2")), str(s.out("ct2")), "--force"],
        lambda s: [s.out("ct2")],
        # the files of a faster-whisper folder (placeholders: the command must refuse before reading them)
        setup=lambda s: _write(s.out("ct2") / "model.bin", os.urandom(100_000)),
    ),
    Case(
        "data record into a dataset with extra keys",
        lambda s: ["--python-script", _recorded_take_script(), str(s.data)],
        lambda s: [s.data],
    ),
    Case(
        "train on a labels.json of [ x 100000",
        lambda s: ["train", "--data", str(s.data), "--out", str(s.out("c"))],
        lambda s: [s.data],
        setup=lambda s: _write(s.data / "labels.json", b"[" * 100_000),
    ),
    Case(
        "train on audio linked from outside the folder",
        lambda s: ["train", "--data", str(s.data), "--out", str(s.out("b"))],
        lambda s: [s.data, s.documents],
        setup=lambda s: _link_outside(s),
    ),
]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _link_outside(scratch: Scratch) -> None:
    first = sorted((scratch.data / "audio").iterdir())[0]
    first.unlink()
    first.symlink_to(scratch.documents / "photo.jpg")


# --- running and measuring ---------------------------------------------------------------------------------


def run_safety_probe(
    scratch_dir: Path,
    base_model: Optional[Path] = None,
    python: Optional[str] = None,
    names: Optional[Sequence[str]] = None,
) -> List[CaseResult]:
    """Run the cases (all, or those whose name contains one of ``names``) in ``scratch_dir``; one result each."""
    scratch_dir = Path(scratch_dir)
    (scratch_dir / "probe").mkdir(parents=True, exist_ok=True)
    scratch = Scratch(scratch_dir / "probe", python or sys.executable, base_model)
    results = []
    for case in CASES:
        if names and not any(n in case.name for n in names):
            continue
        if case.needs_model and base_model is None:
            continue
        scratch.reset()
        if case.setup is not None:
            case.setup(scratch)
        args = case.args(scratch)
        protected = case.protected(scratch)
        before = {root: _snapshot(root) for root in protected}
        started = time.perf_counter()
        proc = _resonance(scratch.python, args, scratch.root)
        seconds = time.perf_counter() - started
        kept = sum(_kept(before[root], root) for root in protected)
        results.append(
            CaseResult(
                case.name,
                _shown(args, scratch_dir),
                proc.returncode,
                sum(len(b) for snapshot in before.values() for b in snapshot.values()),
                kept,
                seconds,
                _first_line(proc, scratch_dir),
            )
        )
    return results


def _resonance(python: str, args: List[str], cwd: Path, check: bool = False) -> subprocess.CompletedProcess:
    if args[:1] == ["--python-script"]:
        command = [python, "-c", args[1], *args[2:]]
    else:
        command = [python, "-m", "resonance.cli", *args]
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
    # cwd: `python -m` puts the working folder first on sys.path, and a checkout there would shadow the
    # installation under test
    proc = subprocess.run(command, capture_output=True, text=True, timeout=STEP_TIMEOUT_S, env=env, cwd=cwd)
    if check and proc.returncode not in (0, 3):  # 3: trained, but not better (a random model)
        raise RuntimeError(f"{' '.join(command)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def _snapshot(root: Path) -> Dict[Path, bytes]:
    """Every file under ``root`` (links not followed) -> its bytes."""
    if root.is_file():
        return {root: root.read_bytes()}
    return {p: p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()}


def _kept(before: Dict[Path, bytes], root: Path) -> int:
    kept = 0
    for path, old in before.items():
        if not path.is_file():
            continue
        new = path.read_bytes()
        appended = path.name == "labels.json" and new.startswith(old.rstrip().rstrip(b"]").rstrip())
        kept += len(old) if new == old or appended else 0
    return kept


def _first_line(proc: subprocess.CompletedProcess, scratch_dir: Path) -> str:
    """The error line (`error: …`) if there is one, else the last line of the output."""
    lines = [line for line in (proc.stderr + proc.stdout).splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("error:", "Traceback", "RecursionError"))]
    line = (errors or lines or [""])[0 if errors else -1]
    line = line.replace(str(scratch_dir / "probe") + os.sep, "")
    return line if len(line) <= MESSAGE_CHARS else line[: MESSAGE_CHARS - 1] + "…"


def _shown(args: List[str], scratch_dir: Path) -> str:
    if args[:1] == ["--python-script"]:
        args = ["(record_session, scripted microphone)", *args[2:]]
    text = " ".join(args).replace(str(scratch_dir / "probe") + os.sep, "")
    return text


def format_table(results: Sequence[CaseResult]) -> str:
    """A Markdown table: one row per case, and a total of the user's bytes lost."""
    lines = [
        "| case | exit | user data before | after | lost | what the user is told |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        message = r.message.replace("|", "\\|")
        lines.append(
            f"| {r.name} | {r.exit_code} | {r.bytes_before:,} B | {r.bytes_kept:,} B | **{r.bytes_lost:,} B** "
            f"| {message} |"
        )
    lost = sum(r.bytes_lost for r in results)
    lines.append(f"\n{len(results)} cases, {lost:,} bytes of user data lost")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m resonance.data.safety_probe", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--base-model", type=Path, help="local Whisper folder: adds the real-adapter cases")
    parser.add_argument("--python", help="the Python whose `resonance` to probe (default: this one)")
    parser.add_argument("--cases", help="comma-separated parts of case names to run (default: all)")
    parser.add_argument("--scratch", type=Path, help="folder to work in (default: a temporary one, removed)")
    args = parser.parse_args(argv)
    names = [n.strip() for n in args.cases.split(",")] if args.cases else None
    with tempfile.TemporaryDirectory(prefix="resonance-safety-probe-") as tmp:
        scratch = args.scratch or Path(tmp)
        results = run_safety_probe(scratch, args.base_model, args.python, names)
    print(format_table(results))
    return 0 if all(r.bytes_lost == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
