"""`resonance serve`, `discover`, `install-service`, `transcribe`, `listen`, `loadtest`, `probe`; the `phrases` group's actions
and `eval phrases`, `eval vad` (the groups belong to resonance/cli.py). Registration only: heavy imports happen in
`run`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from resonance.cli_common import add_command
from resonance.constants import COLLECT_QUOTA_MB, WYOMING_PORT


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(
        sub,
        "serve",
        "serve every patient's bundle to the caregiver's phone and apps over the LAN (HTTPS, offline)",
        "  resonance serve --config pc-cpu --models bundles/     # https on the LAN + a QR code of the page\n"
        "  resonance serve --config jetson-orin-nano --models /data/bundles --auth   # token printed once\n"
        "  resonance serve --config my-box.yaml --models bundles/ --host 127.0.0.1 --port 9000   # plain http\n"
        "  resonance serve --models bundles/ --https --host 127.0.0.1      # https on loopback too\n"
        "  resonance serve --models bundles/ --cert my.crt --key my.key    # your own certificate\n"
        "  resonance serve --models bundles/ --retain ~/resonance-recordings   # keep audio + text (opt-in)\n"
        "  resonance serve --models bundles/ --collect ~/resonance-corrections  # keep what the page confirms\n"
        "  resonance serve --models bundles/ --wyoming-port          # + Home Assistant (Wyoming) on 127.0.0.1:10300\n"
        "  resonance serve --models bundles/ --wyoming-port --wyoming-lan   # Home Assistant on another machine\n"
        "  resonance discover                                       # find the servers on the LAN (mDNS)\n"
        "  curl --cacert ~/.config/resonance/tls/ca.crt -F file=@clip.wav https://127.0.0.1:8000/transcribe\n"
        "  curl -F file=@clip.wav http://127.0.0.1:8080/transcribe      # plain http beside https\n"
        "  open https://<LAN-IP>:8000/ on the phone (trust http://<LAN-IP>:8080/ca.crt once first)\n",
        _run_serve,
    )
    add_config_option(p)
    p.add_argument(
        "--models", required=True, help="folder with one bundle folder per patient (folder = patient id)"
    )
    p.add_argument("--host", help="interface to listen on (default: the device config's, usually 0.0.0.0)")
    p.add_argument(
        "--port",
        type=int,
        help="TCP port of the page and the API (default: the device config's; 0 = any free)",
    )
    tls = p.add_mutually_exclusive_group()
    tls.add_argument(
        "--https",
        action="store_true",
        help="serve over HTTPS on any --host, loopback too (default: HTTPS on the LAN, plain http on loopback)",
    )
    tls.add_argument(
        "--http", action="store_true", help="plain http only, on any --host (phones then get no microphone)"
    )
    p.add_argument(
        "--http-port",
        type=int,
        metavar="PORT",
        help="plain-http port beside HTTPS, for apps that cannot trust the certificate and for the "
        "certificate's download (default: the device config's http_port, 8080, when serving the LAN; 0 = none)",
    )
    p.add_argument(
        "--cert", metavar="PEM", help="your own server certificate (chain) instead of the local CA's"
    )
    p.add_argument("--key", metavar="PEM", help="the private key of --cert")
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="also answer requests addressed to this host name or address (repeatable); by default only "
        "this machine's addresses, its host name, <hostname>.local and localhost are served",
    )
    p.add_argument(
        "--auth", action="store_true", help="require a bearer token (made and printed at first start)"
    )
    p.add_argument(
        "--token-file", help="where the token is kept (default ~/.config/resonance/token, mode 0600)"
    )
    p.add_argument(
        "--reload-interval",
        type=float,
        default=10.0,
        metavar="S",
        help="check the models folder every S seconds for new or re-exported bundles (0 = only at start)",
    )
    p.add_argument(
        "--log-transcripts", action="store_true", help="log full transcripts (default: lengths only)"
    )
    p.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="how much the server logs (default INFO: one line per request)",
    )
    p.add_argument(
        "--retain",
        metavar="DIR",
        help="keep each transcribed recording (16 kHz WAV) and its result (JSON) under DIR/<patient>/, "
        "private to this user (default: nothing is written to disk); silent clips are not kept",
    )
    p.add_argument(
        "--retain-max-mb",
        type=float,
        metavar="MB",
        help="stop keeping recordings once the --retain folder holds this much (default 1024 MB, about 30 "
        "hours of audio); transcription goes on",
    )
    p.add_argument(
        "--collect",
        metavar="DIR",
        help="keep each result the caregiver confirms or corrects on the page as training data: "
        "DIR/<patient>/audio/*.wav + labels.json (default: off, POST /feedback is refused)",
    )
    p.add_argument(
        "--collect-quota-mb",
        type=float,
        default=COLLECT_QUOTA_MB,
        metavar="MB",
        help="the most the --collect folder may hold (default %(default)g MB)",
    )
    announce = p.add_mutually_exclusive_group()
    announce.add_argument(
        "--announce",
        action="store_true",
        help="announce the server by mDNS (zeroconf) so apps and `resonance discover` find it without its "
        "address (default: on when serving every interface, --host 0.0.0.0)",
    )
    announce.add_argument("--no-announce", action="store_true", help="do not announce the server by mDNS")
    p.add_argument(
        "--wyoming-port",
        type=int,
        nargs="?",
        const=WYOMING_PORT,
        metavar="PORT",
        help=f"also speak the Wyoming protocol for Home Assistant's voice assistant on this port (given alone: "
        f"{WYOMING_PORT}, Wyoming's speech-to-text port; 0 = any free); loopback only unless --wyoming-lan",
    )
    p.add_argument(
        "--wyoming-lan",
        action="store_true",
        help="let Home Assistant on another machine reach the Wyoming port (on --host's interfaces): Wyoming "
        "has no access token, so anyone on the LAN can then use it",
    )
    p.add_argument(
        "--wyoming-patient",
        metavar="ID",
        help="whose voice Home Assistant sends (it names no model): needed when the server has several "
        "patients (default: the only one)",
    )
    p.add_argument(
        "--wyoming-answer",
        choices=("phrase", "text"),
        default="phrase",
        help="what Home Assistant gets: phrase (default) = the patient's phrase-board phrase when the board "
        "accepts one, else the free transcription; text = always the free transcription",
    )

    p = add_command(
        sub,
        "discover",
        "find Resonance servers on the home network by mDNS (what `serve` announces), with their addresses",
        "  resonance discover                        # every server on the LAN, in 3 s\n"
        "  resonance discover --json --seconds 5     # for a script or an app's setup\n"
        "  resonance discover --wyoming              # the Wyoming ports Home Assistant would find\n"
        "  resonance discover --interface 127.0.0.1  # only this machine's own servers\n",
        _run_discover,
    )
    p.add_argument(
        "--seconds", type=float, default=3.0, metavar="S", help="how long to listen (default %(default)g s)"
    )
    p.add_argument(
        "--interface",
        action="append",
        metavar="ADDR",
        help="look only on the interface with this address (repeatable; default: every interface)",
    )
    p.add_argument("--wyoming", action="store_true", help="list Wyoming (Home Assistant) ports instead")
    p.add_argument("--json", action="store_true", help="one JSON object per server")

    p = add_command(
        sub,
        "install-service",
        "write a systemd unit that starts `resonance serve` at boot (does not run systemctl)",
        "  sudo $(which resonance) install-service --models /home/care/bundles --config jetson-orin-nano --user care\n"
        "  resonance install-service --models bundles/ --auth --dry-run     # only print the unit\n"
        "  resonance install-service --models bundles/ --wyoming-port --dry-run   # + Home Assistant (Wyoming)\n"
        "  sudo systemctl daemon-reload && sudo systemctl enable --now resonance   # then start it\n",
        _run_install_service,
    )
    p.add_argument("--models", default="bundles", help="folder of patient bundles (default ./bundles)")
    add_config_option(p, beam=False)
    p.add_argument("--user", help="account the server runs as (default: you; under sudo, the sudo user)")
    p.add_argument(
        "--unit-dir", default="/etc/systemd/system", help="where the unit goes (default %(default)s)"
    )
    p.add_argument("--auth", action="store_true", help="serve with --auth (token in the user's ~/.config)")
    p.add_argument("--retain", metavar="DIR", help="serve with --retain DIR (keep recordings + transcripts)")
    p.add_argument("--collect", metavar="DIR", help="serve with --collect DIR (keep the page's corrections)")
    p.add_argument(
        "--wyoming-port",
        type=int,
        nargs="?",
        const=WYOMING_PORT,
        metavar="PORT",
        help=f"serve with --wyoming-port (Home Assistant; given alone: {WYOMING_PORT})",
    )
    p.add_argument(
        "--wyoming-lan",
        action="store_true",
        help="serve with --wyoming-lan (Home Assistant on another machine)",
    )
    p.add_argument("--wyoming-patient", metavar="ID", help="serve with --wyoming-patient ID")
    p.add_argument("--dry-run", action="store_true", help="print the unit instead of writing it")
    p.add_argument("--force", action="store_true", help="replace an existing resonance.service")

    p = add_command(
        sub,
        "transcribe",
        "transcribe audio files with a bundle, offline (no server)",
        "  resonance transcribe --bundle bundles/grandpa clip1.wav clip2.m4a\n"
        "  resonance transcribe --bundle bundles/grandpa --config pc-cuda --json my_data/audio/*.wav\n"
        "  resonance transcribe --bundle bundles/grandpa --mode both clip1.wav   # + the best known phrase\n"
        "  resonance transcribe --bundle bundles/grandpa my_data/      # every recording of a folder\n",
        _run_transcribe,
    )
    p.add_argument("--bundle", required=True, help="a bundle folder made by `resonance export`")
    add_config_option(p)
    p.add_argument(
        "files",
        nargs="+",
        metavar="FILE",
        help="audio files (WAV/FLAC/OGG/MP3, any rate) or folders of them (a dataset folder: its audio/)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per file (text, latency, timings)")
    _add_mode_option(p)

    p = add_command(
        sub,
        "listen",
        "live captions: transcribe what a microphone hears, utterance by utterance, offline",
        "  resonance listen --bundle bundles/grandpa                  # default microphone, Ctrl+C stops\n"
        "  resonance listen --bundle bundles/grandpa --device 2 --end-silence 1.5   # slower speaker\n"
        "  resonance listen --bundle bundles/grandpa --mode both --speak auto     # say the phrase aloud\n"
        "  resonance listen --bundle bundles/grandpa --post http://192.168.1.30:5000/said   # JSON to an app\n"
        "  resonance listen --bundle bundles/grandpa --from-file session.wav      # no microphone: try the VAD\n"
        "  resonance listen --bundle bundles/grandpa --vad energy                 # voices or a TV in the room\n"
        "  python -m sounddevice                                      # list the device numbers\n",
        _run_listen,
    )
    p.add_argument("--bundle", required=True, help="a bundle folder made by `resonance export`")
    add_config_option(p)
    p.add_argument("--device", help="input device number or name (default: the system's default microphone)")
    p.add_argument(
        "--end-silence",
        type=float,
        default=1.0,
        metavar="S",
        help="silence that ends an utterance (default 1.0 s)",
    )
    p.add_argument("--json", action="store_true", help="one JSON object per utterance")
    p.add_argument(
        "--speak",
        nargs="?",
        const="auto",
        metavar="CMD",
        help="say each result aloud (the accepted phrase, else the text): 'auto' = espeak-ng/espeak/spd-say/say, "
        "or a command that takes the text as its last argument",
    )
    p.add_argument(
        "--post", metavar="URL", help="also POST each result as JSON to this URL (e.g. a home app)"
    )
    p.add_argument(
        "--from-file",
        metavar="WAV",
        help="read a recording instead of the microphone (same VAD, as fast as it can)",
    )
    p.add_argument(
        "--vad",
        metavar="{silero,energy}",
        help="what cuts the utterances: silero (default: a small neural VAD, in the [cpu] extra; it lost far "
        "fewer phrases in room noise, hum and knocks) or energy (the level above the room's, no model; better "
        "with voices or a TV in the background). `resonance eval vad` measures both",
    )
    _add_mode_option(p)

    p = add_command(
        sub,
        "loadtest",
        "hammer a running server with good and bad clips; report throughput, latency and any 5xx",
        "  resonance loadtest http://127.0.0.1:8000 --clients 8 --requests 1000\n"
        "  resonance loadtest http://127.0.0.1:8000 --audio my_data/audio --patient grandpa --server-pid 4242\n"
        "  resonance loadtest http://192.168.1.20:8080 --allow-remote --token $(cat ~/.config/resonance/token)"
        "   # a LAN server's plain-http port\n",
        _run_loadtest,
    )
    p.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:8000")
    p.add_argument("--clients", type=int, default=8, help="parallel connections (default 8)")
    p.add_argument("--requests", type=int, default=1000, help="total requests (default 1000)")
    p.add_argument("--max-seconds", type=float, default=120.0, help="stop after this long (default 120)")
    p.add_argument("--patient", help="patient id to send (default: the server's only patient)")
    p.add_argument("--audio", help="folder of real clips (*.wav/*.flac) to use as the good requests")
    p.add_argument(
        "--bad-fraction", type=float, default=0.25, help="share of deliberately bad uploads (0.25)"
    )
    p.add_argument("--token", help="bearer token, for a server started with --auth")
    p.add_argument("--server-pid", type=int, help="read the server's memory from /proc/PID (same machine)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback server address")
    p.add_argument("--seed", type=int, default=0, help="seed of the generated clips and their order")
    p.add_argument(
        "--warmup",
        type=int,
        help="requests of every kind sent first and not counted, before the baseline memory reading (default 4 per client)",
    )
    p.add_argument(
        "--max-rss-growth",
        type=float,
        default=0.10,
        help="fail when the server's memory grows more than this after the warm-up (default 0.10 = 10 %%)",
    )

    p = add_command(
        sub,
        "probe",
        "attack a running server as a hostile home network would (issue #12) and print a table of what held",
        "  resonance serve --models bundles/ --host 127.0.0.1 --port 8000 & \n"
        "  resonance probe http://127.0.0.1:8000 --server-pid $!              # the issue's cases, ~1 min\n"
        "  resonance probe http://127.0.0.1:8000 --token $(cat ~/.config/resonance/token) --audio take2/audio\n"
        "  resonance probe http://127.0.0.1:8000 --seconds 10 --bombs 1      # a quick check\n"
        "cases: decompression bombs (an M4A of 20 min of 48 kHz stereo; needs PyAV), idle and slow-header\n"
        "connections, unfinished 50 MB uploads without a token, transcribing clients, /health timed throughout.\n"
        "Exit 0 when the targets are met (bomb: +100 MB RSS at most; /health p99 <= 200 ms; no unexpected 5xx).\n",
        _run_probe,
    )
    p.add_argument("url", help="the server's base URL, e.g. http://127.0.0.1:8000 (loopback only by default)")
    p.add_argument("--server-pid", type=int, help="read the server's memory from /proc/PID (same machine)")
    p.add_argument("--token", help="bearer token, for a server started with --auth")
    p.add_argument("--patient", help="patient id for the transcribing clients (default: the only one)")
    p.add_argument("--audio", help="folder of real clips for the transcribing clients (default: generated)")
    p.add_argument("--seconds", type=float, default=30.0, help="length of the everything-at-once phase (30)")
    p.add_argument("--clients", type=int, default=8, help="transcribing clients (8)")
    p.add_argument("--bombs", type=int, default=3, help="decompression bombs sent at once (3)")
    p.add_argument("--idle", type=int, default=30, help="idle TCP connections (30)")
    p.add_argument("--slow", type=int, default=10, help="connections that never finish their headers (10)")
    p.add_argument("--uploads", type=int, default=10, help="unfinished 50 MB uploads without a token (10)")
    p.add_argument("--allow-remote", action="store_true", help="allow a non-loopback server address")


def register_phrases(phrases_sub: argparse._SubParsersAction) -> None:
    """Fill the `phrases` group: list, add, remove."""
    for action, help_text, examples in (
        (
            "list",
            "print a bundle's phrase board, each phrase 'recorded' (trained on) or 'added' (by the caregiver)",
            "  resonance phrases list --bundle bundles/grandpa\n"
            "  resonance phrases list --bundle bundles/grandpa --json   # what GET /patients shows as 'board'\n",
        ),
        (
            "add",
            "put phrases on a bundle's board without re-exporting (board.json beside the manifest, atomically)",
            "  resonance phrases add --bundle bundles/grandpa 帮我拿手机 我想出去走走\n"
            "  resonance phrases add --bundle bundles/grandpa --from-file phrases.txt   # one phrase per line\n"
            "the model scores a phrase it was never trained on, less surely than a recorded one; record it\n"
            "and `resonance update` to teach it. A running server picks the board up at its next reload\n"
            "(--reload-interval) without reloading the model.\n",
        ),
        (
            "remove",
            "take phrases off a bundle's board (recorded ones too; `add` puts them back)",
            "  resonance phrases remove --bundle bundles/grandpa 我想咳嗽\n"
            "nothing is deleted: the recordings and the model stay as they are.\n",
        ),
    ):
        p = add_command(phrases_sub, action, help_text, examples, _run_phrases)
        p.add_argument("--bundle", required=True, help="a bundle folder made by `resonance export`")
        p.add_argument("--json", action="store_true", help='print the board as JSON: [{"text", "source"}]')
        if action != "list":
            p.add_argument("phrases", nargs="*", metavar="PHRASE", help=f"phrases to {action}")
            p.add_argument(
                "--from-file", metavar="FILE", help=f"also {action} the phrases of a file, one a line"
            )


def register_eval(eval_sub: argparse._SubParsersAction) -> None:
    """`resonance eval phrases` and `eval vad` in the `eval` group (torch-free: they run as on the device)."""
    _register_eval_phrases(eval_sub)
    _register_eval_vad(eval_sub)


def _register_eval_phrases(eval_sub: argparse._SubParsersAction) -> None:
    """`resonance eval phrases`."""
    p = add_command(
        eval_sub,
        "phrases",
        "measure the phrase board: top-1 accuracy, rejection of unknown requests, latency free vs both",
        "  resonance eval phrases --bundle bundles/grandpa --data take2\n"
        "  resonance eval phrases --bundle bundles/generic --data take2 --phrases take1_phrases.txt\n"
        "  resonance eval phrases --bundle bundles/grandpa --data take2 --out-of-list-fraction 0.3 --seed 1\n"
        "  resonance eval phrases --bundle bundles/grandpa --data take2 --save   # keep the fitted calibration\n"
        "a random share of the list's phrases is taken out of the list (their recordings must be rejected as\n"
        '"none of these"); the calibration is fitted on one half of the recordings and reported on the other,\n'
        "then the halves swap.\n",
        _run_eval_phrases,
    )
    p.add_argument("--bundle", required=True, help="a bundle folder made by `resonance export`")
    p.add_argument("--data", required=True, help="labelled recordings (labels.json), not used in training")
    p.add_argument("--phrases", help="phrase list file, one per line (default: the bundle's list)")
    p.add_argument(
        "--out-of-list-fraction",
        type=float,
        default=0.2,
        help="share of the listed phrases removed from the list to simulate unknown requests (default 0.2)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the removal and of the halves (default 0)")
    p.add_argument(
        "--all-phrases",
        action="store_true",
        help="score every phrase with the model (no shortlist), to see what the shortlist costs in accuracy",
    )
    p.add_argument("--threads", type=int, help="onnxruntime threads (default: onnxruntime's choice)")
    p.add_argument("--json", metavar="FILE", help="also write the results (and per-recording rows) here")
    p.add_argument(
        "--save",
        action="store_true",
        help="store the calibration fitted on all the recordings in the bundle (manifest phrase_calibration; "
        "the model files are untouched)",
    )


def _register_eval_vad(eval_sub: argparse._SubParsersAction) -> None:
    """`resonance eval vad`."""
    p = add_command(
        eval_sub,
        "vad",
        "measure the VADs of `listen`: recordings joined by pauses, in quiet and in noise; utterances found, "
        "cut short, split, merged, missed, false alarms",
        "  resonance eval vad --data take2                       # every recording, both VADs, 8 noise conditions\n"
        "  resonance eval vad --data take2 --clips 30 --seed 1    # quicker, another order and other noise\n"
        "  resonance eval vad --data take2 --vad energy --json runs/vad.json\n"
        "the recordings (one utterance each) are joined by 1.5-4 s pauses, and each condition adds a noise: room\n"
        "noise at 40/20/10/5 dB SNR, mains hum, babble, knocks; no model and no microphone are needed.\n",
        _run_eval_vad,
    )
    p.add_argument("--data", required=True, help="labelled recordings (labels.json), one utterance each")
    p.add_argument("--clips", type=int, help="use only the first N recordings (default: all)")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the order, the pauses and the noise (default 0)"
    )
    p.add_argument(
        "--vad",
        action="append",
        metavar="{silero,energy}",
        help="a VAD to measure; repeat for several (default: every one)",
    )
    p.add_argument("--json", metavar="FILE", help="also write the counts as JSON")


def _add_mode_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--mode",
        choices=("free", "phrases", "both"),
        default="free",
        help="free: transcribe (default); phrases: the best phrase of the bundle's list or 'none of these'; "
        "both: the two, on one encoder pass",
    )


def add_config_option(p: argparse.ArgumentParser, beam: bool = True, purpose: str = "") -> None:
    """--config (and --beam-size): how every command that decodes runs the bundle (serve, transcribe, listen,
    and update's judge, which must hear the held-out recordings as the device will)."""
    p.add_argument(
        "--config",
        default="pc-cpu",
        help=f"device config{purpose}: pc-cpu, pc-cuda, jetson-orin-nano, jetson-agx-orin, or a YAML path "
        "(default pc-cpu)",
    )
    if beam:
        p.add_argument(
            "--beam-size",
            type=beam_size_arg,
            metavar="N",
            help="hypotheses kept while decoding: 1 = greedy (default: the device config's decoding.beam_size, "
            "4 unless it says otherwise); 4 beams heard recorded phrases 3.5 points better than greedy on int8 "
            "for ~+35 ms a clip on a 2-core CPU",
        )


def beam_size_arg(text: str) -> int:
    """--beam-size, checked where it is typed: a wrong value is the command line's, not the device config's."""
    from resonance.runtime.decoding import MAX_BEAM_SIZE

    try:
        size = int(text)
    except ValueError:
        size = 0
    if not 1 <= size <= MAX_BEAM_SIZE:
        raise argparse.ArgumentTypeError(
            f"must be between 1 (greedy) and {MAX_BEAM_SIZE}, got {text!r}: use 1 or e.g. 4"
        )
    return size


def device_config_from_args(args: argparse.Namespace, **changes: Any):
    """The --config device config with the command line's overrides, re-validated like the YAML values."""
    from resonance.runtime.device_config import load_device_config

    config = load_device_config(args.config)
    if getattr(args, "beam_size", None) is not None:
        changes["decoding"] = {"beam_size": args.beam_size}
    changes = {k: v for k, v in changes.items() if v is not None}
    return config.replace(**changes) if changes else config


def _collect_dir(args: argparse.Namespace) -> Any:
    """--collect's folder, refused when it overlaps the models or the --retain folder: each of them is read
    by something that expects only its own files there (the registry, `data check`, training)."""
    from resonance.errors import ResonanceError

    if not args.collect:
        return None
    collect = Path(args.collect).expanduser().absolute()
    others = [("--models", args.models), ("--retain", args.retain)]
    for flag, value in others:
        if value is None:
            continue
        other = Path(value).expanduser().absolute()
        if collect == other or other in collect.parents or collect in other.parents:
            raise ResonanceError(
                f"--collect {collect} overlaps {flag} {other}", "give --collect a folder of its own"
            )
    return collect


def _run_serve(args: argparse.Namespace) -> int:
    from resonance.errors import ResonanceError
    from resonance.runtime.models import require_models_dir
    from resonance.runtime.server import ServerSettings, default_token_path, load_or_create_token, serve
    from resonance.runtime.server.auth import token_note
    from resonance.runtime.server.https import choose_certificate, plain_http_port

    config = device_config_from_args(args, host=args.host)
    if args.port is not None and not 0 <= args.port <= 65535:
        raise ResonanceError(f"--port {args.port} is out of range", "use 1-65535, or 0 for any free port")
    if args.retain_max_mb is not None and not args.retain_max_mb > 0:
        raise ResonanceError(
            f"--retain-max-mb {args.retain_max_mb:g} must be positive", "e.g. --retain-max-mb 1024"
        )
    if args.http_port is not None and not 0 <= args.http_port <= 65535:
        raise ResonanceError(f"--http-port {args.http_port} is out of range", "use 1-65535, or 0 for none")
    if args.http and (args.cert or args.key):
        raise ResonanceError(
            "--http cannot go with --cert/--key", "leave out --http to serve your certificate"
        )
    require_models_dir(Path(args.models))
    tls = choose_certificate(config.host, args.https, args.http, args.cert, args.key, args.allow_host)
    token, note = None, ""
    if args.auth:
        path = Path(args.token_file).expanduser() if args.token_file else default_token_path()
        token, created = load_or_create_token(path)
        note = token_note(path, token, created, interactive=sys.stdout.isatty())
    settings = ServerSettings(
        auth_token=token,
        log_transcripts=args.log_transcripts,
        log_level=args.log_level,
        reload_interval_s=max(0.0, args.reload_interval),
        retain_dir=Path(args.retain).expanduser() if args.retain else None,
        allowed_hosts=tuple(args.allow_host),
        **({"retain_max_mb": args.retain_max_mb} if args.retain_max_mb is not None else {}),
        collect_dir=_collect_dir(args),
        collect_quota_mb=args.collect_quota_mb,
        tls=tls,
    )
    http_port = plain_http_port(config, tls, args.http_port)
    # The QR code carries the token only to a terminal: under systemd the banner goes to the journal.
    qr_token = bool(token) and sys.stdout.isatty()
    serve(
        Path(args.models),
        config,
        settings,
        args.port,
        note,
        http_port=http_port,
        qr_token=qr_token,
        wyoming=_wyoming_settings(args, config.host),
        announce=_announce(args, config.host),
    )
    return 0


def _announce(args: argparse.Namespace, host: str) -> bool:
    """--announce / --no-announce; by default on when the server listens on every interface and zeroconf is
    installed (without it, one line says how to get it)."""
    if args.announce or args.no_announce:
        return bool(args.announce)
    if host not in ("0.0.0.0", "::", ""):
        return False
    try:
        import zeroconf  # noqa: F401
    except ImportError:
        from resonance.runtime.discovery import INSTALL_HINT

        print(f"note: not announced on the network by mDNS: {INSTALL_HINT}", file=sys.stderr)
        return False
    return True


def _wyoming_settings(args: argparse.Namespace, lan_host: str) -> Any:
    """--wyoming-*: None when Wyoming is off; loopback unless --wyoming-lan (Wyoming has no authentication)."""
    from resonance.errors import ResonanceError

    if args.wyoming_port is None:
        if args.wyoming_lan or args.wyoming_patient:
            flag = "--wyoming-lan" if args.wyoming_lan else "--wyoming-patient"
            raise ResonanceError(f"{flag} needs --wyoming-port", "add --wyoming-port (10300 by default)")
        return None
    if not 0 <= args.wyoming_port <= 65535:
        raise ResonanceError(
            f"--wyoming-port {args.wyoming_port} is out of range", "use 1-65535 (Wyoming's is 10300), or 0"
        )
    from resonance.runtime.server.wyoming import WyomingSettings

    host = lan_host if args.wyoming_lan else ("::1" if ":" in lan_host else "127.0.0.1")
    return WyomingSettings(
        host=host, port=args.wyoming_port, answer=args.wyoming_answer, patient=args.wyoming_patient
    )


def _run_discover(args: argparse.Namespace) -> int:
    from resonance.errors import ResonanceError
    from resonance.runtime.discovery import SERVICE_TYPE, WYOMING_SERVICE_TYPE, discover

    if not 0 < args.seconds <= 60:
        raise ResonanceError(
            f"--seconds {args.seconds:g} is out of range", "use e.g. --seconds 3 (at most 60)"
        )
    kind = WYOMING_SERVICE_TYPE if args.wyoming else SERVICE_TYPE
    found = discover(args.seconds, args.interface, kind)
    for server in found:
        if args.json:
            print(json.dumps(server.to_json(), ensure_ascii=False), flush=True)
            continue
        if args.wyoming:
            print(f"{server.name}: host {', '.join(server.addresses)}, port {server.port}", flush=True)
            continue
        p = server.properties
        notes = ["access token needed" if p.get("auth") == "token" else "no token"]
        if p.get("cert_sha256"):
            notes.append(f"certificate SHA-256 {p['cert_sha256']}")
        if p.get("http_port"):
            notes.append(f"plain http on port {p['http_port']}")
        print(
            f"{server.name}: {server.url}  ({'; '.join(notes)}; version {p.get('version', '?')})", flush=True
        )
    if not found:
        what = "Wyoming port" if args.wyoming else "Resonance server"
        print(
            f"no {what} answered within {args.seconds:g} s: is `resonance serve` running (it announces itself "
            "when serving the LAN), on this network? Some routers block mDNS: then type its address",
            file=sys.stderr,
        )
        return 1
    return 0


def _run_install_service(args: argparse.Namespace) -> int:
    from resonance.runtime.service import (
        ENABLE_COMMAND,
        UNIT_NAME,
        ServiceOptions,
        default_user,
        home_of,
        install_service,
        resolve_config,
    )

    user = args.user or default_user()
    models = Path(args.models).expanduser().absolute()
    options = ServiceOptions(
        models=models,
        config=resolve_config(args.config),
        user=user,
        home=home_of(user),
        auth=args.auth,
        retain=Path(args.retain).expanduser().absolute() if args.retain else None,
        collect=Path(args.collect).expanduser().absolute() if args.collect else None,
        wyoming_port=args.wyoming_port,
        wyoming_lan=args.wyoming_lan,
        wyoming_patient=args.wyoming_patient,
    )
    if (args.wyoming_lan or args.wyoming_patient) and args.wyoming_port is None:
        from resonance.errors import ResonanceError

        flag = "--wyoming-lan" if args.wyoming_lan else "--wyoming-patient"
        raise ResonanceError(f"{flag} needs --wyoming-port", "add --wyoming-port (10300 by default)")
    text = install_service(options, Path(args.unit_dir), force=args.force, dry_run=args.dry_run)
    if args.dry_run:
        print(text, end="")
        return 0
    print(f"Wrote {Path(args.unit_dir) / UNIT_NAME}: `resonance serve` as user '{user}', started at boot.")
    if user == "root":
        print("note: the server will run as root; pass --user <account> to run it unprivileged.")
    if not models.is_dir():
        print(f"note: {models} does not exist yet: copy the patients' bundle folders there.")
    print("Start it now and at every boot with:")
    print(f"  {ENABLE_COMMAND}")
    print("Watch it with:  journalctl -u resonance -f")
    return 0


def _run_transcribe(args: argparse.Namespace) -> int:
    from resonance.errors import AudioError
    from resonance.runtime.phrases import summary
    from resonance.runtime.transcriber import Transcriber

    files = audio_files(args.files)  # before the model loads: a wrong folder is said at once
    transcriber = Transcriber.for_device(args.bundle, device_config_from_args(args))
    failures = 0
    for file in files:
        try:
            result = transcriber.transcribe(file, mode=args.mode)
        except AudioError as exc:  # one unreadable file must not hide the others' results
            failures += 1
            print(f"{file}: error: {exc}", file=sys.stderr)
            continue
        latency = result.timings.get("total_ms", 0.0)
        if args.json:
            print(json.dumps({"file": file, **result.to_json()}, ensure_ascii=False), flush=True)
        else:
            phrase = f"   {summary(result.phrases)}" if result.phrases is not None else ""
            print(
                f"{file}: {result.text}{phrase}   [{latency:.0f} ms, {result.duration_s:.1f} s audio]",
                flush=True,
            )
    return 2 if failures else 0


def audio_files(paths: Any) -> list:
    """The command line's files, each folder replaced by the audio files in it (name order), or in its audio/
    folder when it is a dataset (labels.json + audio/)."""
    from resonance.data.labels import AUDIO_DIR, AUDIO_EXTENSIONS
    from resonance.errors import ResonanceError

    files = []
    for given in paths:
        folder = Path(given)
        if not folder.is_dir():
            files.append(given)  # a file (or a missing one: transcribe says which)
            continue
        for candidate in (folder, folder / AUDIO_DIR):
            found = (
                sorted(
                    str(p)
                    for p in candidate.glob("*")
                    if p.is_file() and p.suffix.lower() in AUDIO_EXTENSIONS
                )
                if candidate.is_dir()
                else []
            )
            if found:
                files.extend(found)
                break
        else:
            raise ResonanceError(
                f"no audio files in the folder {given}",
                f"give audio files ({', '.join(AUDIO_EXTENSIONS[:5])} ...) or a folder that holds them",
            )
    return files


def _run_listen(args: argparse.Namespace) -> int:
    from resonance.runtime.listen import ResultSinks, listen, speech_command
    from resonance.runtime.vad import VAD_KINDS, VadOptions

    device = int(args.device) if args.device and args.device.isdigit() else args.device
    config = device_config_from_args(args)
    options = VadOptions(end_silence_s=args.end_silence)
    sinks = ResultSinks(args.post, speech_command(args.speak) if args.speak else None)
    listen(
        Path(args.bundle),
        config,
        device,
        options,
        as_json=args.json,
        mode=args.mode,
        from_file=args.from_file,
        sinks=sinks,
        vad=args.vad or VAD_KINDS[0],
    )
    return 0


def _run_phrases(args: argparse.Namespace) -> int:
    from resonance.runtime.board import RECORDED, edit_board, read_board

    action = args.phrases_command
    given = list(getattr(args, "phrases", None) or [])
    if getattr(args, "from_file", None):
        from resonance.data.record import read_phrases

        given += read_phrases(args.from_file)
    if action != "list" and not given:
        from resonance.errors import ResonanceError

        raise ResonanceError(f"nothing to {action}", "name the phrases, or pass --from-file FILE")
    # Adding what the board has changes nothing: said, so the caregiver does not look for a new phrase.
    already = read_board(Path(args.bundle)).on_board(given) if action == "add" else []
    board = edit_board(Path(args.bundle), **({action: given} if action != "list" else {}))
    if already:
        print(f"already on the board: {', '.join(already)}", file=sys.stderr)
    if args.json:
        print(json.dumps(board.to_json(), ensure_ascii=False, indent=1))
    else:
        for phrase in board.phrases:
            print(f"{phrase.text}\t{phrase.source}")
    recorded = sum(p.source == RECORDED for p in board.phrases)
    print(
        f"{len(board)} phrase(s) on the board of {args.bundle}: {recorded} recorded, {len(board) - recorded} "
        f"added" + (f", {len(board.removed)} recorded one(s) taken off" if board.removed else ""),
        file=sys.stderr,
    )
    return 0


def _run_eval_vad(args: argparse.Namespace) -> int:
    from resonance.runtime.vad import VAD_KINDS, check_vad
    from resonance.runtime.vad_eval import evaluate_vads, format_table, load_recordings

    if args.clips is not None and args.clips < 1:
        from resonance.errors import ResonanceError

        raise ResonanceError(f"--clips must be at least 1, not {args.clips}", "e.g. --clips 30")
    for name in args.vad or ():  # before the recordings are read
        check_vad(name)
    recordings = load_recordings(Path(args.data), args.clips)
    report = evaluate_vads(
        recordings,
        vads=args.vad or VAD_KINDS,
        seed=args.seed,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(format_table(report), flush=True)
    if args.json:
        from resonance.fsutil import write_json_atomic

        write_json_atomic(Path(args.json), report)
    return 0


def _run_eval_phrases(args: argparse.Namespace) -> int:
    from resonance.runtime.phrases_eval import evaluate_phrases, format_report

    report = evaluate_phrases(
        Path(args.bundle),
        Path(args.data),
        phrases_file=Path(args.phrases) if args.phrases else None,
        out_of_list_fraction=args.out_of_list_fraction,
        seed=args.seed,
        all_phrases=args.all_phrases,
        threads=args.threads,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
    )
    print(format_report(report), flush=True)
    if args.save:
        from resonance.runtime.bundle import update_manifest

        update_manifest(Path(args.bundle), phrase_calibration=report["calibration_all"])
        print(f"  saved in {args.bundle}/manifest.json (phrase_calibration)", flush=True)
    if args.json:
        from resonance.fsutil import write_json_atomic

        write_json_atomic(Path(args.json), report)
    return 0


def _run_loadtest(args: argparse.Namespace) -> int:
    from resonance.runtime.loadtest import LoadtestSettings, run_loadtest

    settings = LoadtestSettings(
        url=args.url,
        clients=args.clients,
        requests=args.requests,
        max_seconds=args.max_seconds,
        patient=args.patient,
        audio_dir=Path(args.audio) if args.audio else None,
        bad_fraction=args.bad_fraction,
        token=args.token,
        server_pid=args.server_pid,
        allow_remote=args.allow_remote,
        seed=args.seed,
        warmup=args.warmup,
        max_rss_growth=args.max_rss_growth,
    )
    report = run_loadtest(settings)
    print(report.summary(), flush=True)
    return 0 if report.ok else 1


def _run_probe(args: argparse.Namespace) -> int:
    from resonance.runtime.probe import ProbeSettings, run_probe

    settings = ProbeSettings(
        url=args.url,
        token=args.token,
        server_pid=args.server_pid,
        patient=args.patient,
        audio_dir=Path(args.audio) if args.audio else None,
        bombs=args.bombs,
        idle_connections=args.idle,
        slow_connections=args.slow,
        unfinished_uploads=args.uploads,
        clients=args.clients,
        seconds=args.seconds,
        allow_remote=args.allow_remote,
    )
    report = run_probe(settings, log=lambda line: print(line, file=sys.stderr, flush=True))
    print(report.table(), flush=True)
    return 0 if report.ok else 1
