"""Wyoming (Home Assistant's voice pipeline) as its own client library meets it: `resonance serve --wyoming-port`
on loopback beside HTTP, the tiny bundle; the bounds and the shared slots in process."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import socket
import time
from typing import List

import numpy as np
import pytest
from helpers import Server, copy_bundle, tone, wav, write_config
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info

MAX_AUDIO_S = 5
CHUNK = 1024  # samples per chunk, as Home Assistant sends them


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_bundle):
    root = tmp_path_factory.mktemp("wyoming")
    models = root / "bundles"
    models.mkdir()
    shutil.copytree(tiny_bundle, models / "p1")
    config = write_config(root / "test.yaml", max_audio_seconds=MAX_AUDIO_S)
    srv = Server(models, config, "--wyoming-port", "0", "--wyoming-answer", "text")
    match = re.search(r"Wyoming protocol\): host (\S+), port (\d+)", srv.output)
    assert match, srv.output
    srv.wyoming = (match.group(1).rstrip(","), int(match.group(2)))
    yield srv
    srv.stop()


def pcm(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def audio_events(samples: np.ndarray, rate: int = 16000, channels: int = 1) -> List[Event]:
    data = pcm(samples)
    step = CHUNK * 2 * channels
    chunks = [
        AudioChunk(rate=rate, width=2, channels=channels, audio=data[i : i + step])
        for i in range(0, len(data), step)
    ]
    return [
        AudioStart(rate=rate, width=2, channels=channels).event(),
        *(c.event() for c in chunks),
        AudioStop().event(),
    ]


def converse(address, events: List[Event], replies: int = 1) -> List[Event]:
    """Send ``events`` with wyoming's client, read up to ``replies`` events (fewer when it closes)."""

    async def talk() -> List[Event]:
        async with AsyncTcpClient(*address, read_timeout=60) as client:
            for event in events:
                await client.write_event(event)
            got = []
            for _ in range(replies):
                event = await client.read_event()
                if event is None:
                    break
                got.append(event)
            return got

    return asyncio.run(talk())


def test_describe_lists_each_patient_as_a_model_with_its_language(server):
    (event,) = converse(server.wyoming, [Describe().event()])
    info = Info.from_event(event)
    (program,) = info.asr
    assert program.name == "resonance" and program.installed
    assert [(m.name, m.languages) for m in program.models] == [("p1", ["zh"])]
    assert "Home Assistant (Wyoming protocol): host 127.0.0.1" in server.output
    assert "loopback only" in server.output


def test_a_recording_in_chunks_is_transcribed_as_over_http(server):
    audio = tone(1.5, freq=330.0)
    http = server.post(files={"file": ("c.wav", wav(audio), "audio/wav")}, data={"mode": "free"}).json()
    events = [Transcribe(name="p1", language="zh-CN").event(), *audio_events(audio)]
    (event,) = converse(server.wyoming, events)
    assert Transcript.is_type(event.type), event
    transcript = Transcript.from_event(event)
    assert transcript.text == http["text"] and transcript.language == "zh"
    # no name: the only patient; a 44.1 kHz stereo recording is converted like an upload
    stereo = np.repeat(tone(1.0, rate=44100)[:, None], 2, axis=1).reshape(-1)
    (event,) = converse(server.wyoming, [Transcribe().event(), *audio_events(stereo, 44100, 2)])
    assert Transcript.is_type(event.type)
    logged = r"wyoming transcribe patient=p1 audio_s=1\.00 text_len=\d+ answer=text"
    deadline = time.monotonic() + 10  # the server's output is read by a thread: give it a moment
    while not re.search(logged, server.output) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert re.search(logged, server.output), server.output[-2000:]


def test_the_length_cap_holds_while_the_chunks_arrive(server):
    too_long = audio_events(tone(MAX_AUDIO_S + 1.0))[:-1]  # no audio-stop: refused before the end
    got = converse(server.wyoming, [Transcribe().event(), *too_long], replies=2)
    assert [e.type for e in got] == ["error"]  # then the connection is closed
    error = Error.from_event(got[0])
    assert error.code == "audio_too_long" and f"{MAX_AUDIO_S} s" in error.text


@pytest.mark.parametrize(
    ("request_event", "code"),
    [
        (Transcribe(language="en"), "unsupported_language"),
        (Transcribe(name="nobody"), "unknown_patient"),
    ],
)
def test_a_wrong_language_or_patient_is_an_error_before_the_audio(server, request_event, code):
    got = converse(server.wyoming, [request_event.event(), *audio_events(tone(0.5))], replies=2)
    assert [e.type for e in got] == ["error"] and Error.from_event(got[0]).code == code


def test_an_announced_payload_over_the_bound_is_refused_unread(server):
    with socket.create_connection(server.wyoming, timeout=10) as sock:
        header = {"type": "audio-chunk", "data": {"rate": 16000, "width": 2, "channels": 1}}
        header["payload_length"] = 2_000_000_000
        sock.sendall(json.dumps(header).encode() + b"\n")
        reply = b""
        while True:
            data = sock.recv(4096)
            if not data:
                break  # closed by the server
            reply += data
    first = json.loads(reply.split(b"\n")[0])
    assert first["type"] == "error"
    assert server.alive and server.get("/health").status_code == 200


# -- in process: the slots HTTP uses, and what the transcript says ------------------------------------------------


@pytest.fixture
def context(tmp_path, tiny_bundle):
    from resonance.runtime.device_config import load_device_config
    from resonance.runtime.models import ModelRegistry
    from resonance.runtime.server import create_app
    from resonance.runtime.server.context import EXTENSION

    models = tmp_path / "bundles"
    models.mkdir()
    copy_bundle(tiny_bundle, models, "p1")
    config = load_device_config(
        write_config(tmp_path / "t.yaml", max_concurrent_requests=1, queue_timeout_s=0.3)
    )
    return create_app(ModelRegistry(models, config), config).extensions[EXTENSION]


def run_session(context, answer: str, events: List[Event]) -> List[Event]:
    from resonance.runtime.server.wyoming import Session, WyomingSettings

    session = Session(context, WyomingSettings(answer=answer))

    async def go() -> List[Event]:
        replies: List[Event] = []
        for event in events:
            replies += await session.handle(event)
        return replies

    return asyncio.run(go())


def test_a_busy_server_answers_busy_on_the_slots_http_shares(context):
    from resonance.runtime.server.wyoming import ProtocolError

    context.slots.acquire_blocking(context.slots.deadline())  # an HTTP transcription holds the only slot
    try:
        # an error event, then the connection closes: Home Assistant reads until a transcript or the end
        with pytest.raises(ProtocolError) as refused:
            run_session(context, "text", [Transcribe().event(), *audio_events(tone(0.5))])
    finally:
        context.slots.release(0.0)
    assert refused.value.code == "busy" and "retry after" in refused.value.text
    (reply,) = run_session(context, "text", [Transcribe().event(), *audio_events(tone(0.5))])
    assert Transcript.is_type(reply.type)


def test_with_several_patients_home_assistant_needs_wyoming_patient(context, tiny_bundle):
    from resonance.errors import ResonanceError
    from resonance.runtime.server.wyoming import ProtocolError, Session, WyomingServer, WyomingSettings

    copy_bundle(tiny_bundle, context.registry.models_dir, "p2")
    context.registry.reload()
    home_assistant = Transcribe(language="zh")  # what Home Assistant sends: a language, no model name
    with pytest.raises(ProtocolError, match="--wyoming-patient") as refused:
        Session(context, WyomingSettings()).choose(home_assistant)
    assert refused.value.code == "no_patient"
    assert Session(context, WyomingSettings(patient="p2")).choose(home_assistant) == "p2"
    assert Session(context, WyomingSettings(patient="p2")).choose(Transcribe(name="p1")) == "p1"
    with socket.socket() as sock, pytest.raises(
        ResonanceError, match="--wyoming-patient p3: no such patient"
    ):
        WyomingServer(sock, context, WyomingSettings(patient="p3"))
    lines = WyomingServer(socket.socket(), context, WyomingSettings()).banner_lines(False)
    assert any("start with --wyoming-patient <id>" in line for line in lines)


def test_phrase_answer_sends_the_accepted_phrase_text_answer_the_free_text(context, monkeypatch):
    from resonance.runtime.phrases import PhraseMatch

    bundle = context.registry.get()
    audio = tone(1.0, freq=330.0)
    free = bundle.transcriber.transcribe(audio).text
    accepted = PhraseMatch("帮我开灯", 0.93, (), False, "matched")
    real = bundle.transcriber.transcribe

    def with_board(samples, mode="free", **kwargs):
        result = real(samples, mode=mode, **kwargs)
        if mode == "free":
            return result
        from dataclasses import replace

        return replace(result, phrases=accepted)  # the board accepted a phrase

    monkeypatch.setattr(bundle.transcriber, "transcribe", with_board)
    events = [Transcribe().event(), *audio_events(audio)]
    (phrase,) = run_session(context, "phrase", events)
    (text,) = run_session(context, "text", events)
    assert Transcript.from_event(phrase).text == "帮我开灯"
    assert Transcript.from_event(text).text == free
    rejected = PhraseMatch(None, 0.2, (), True, "none_of_these")
    accepted = rejected  # "none of these": the free transcription
    (phrase,) = run_session(context, "phrase", events)
    assert Transcript.from_event(phrase).text == free


def test_wyoming_stays_on_loopback_unless_the_lan_is_asked_for(run_cli, tmp_path):
    from resonance.cli import build_parser
    from resonance.runtime.cli import _wyoming_settings

    parser = build_parser()
    args = parser.parse_args(["serve", "--models", "m", "--wyoming-port"])
    assert (_wyoming_settings(args, "0.0.0.0").host, args.wyoming_port) == ("127.0.0.1", 10300)
    args = parser.parse_args(["serve", "--models", "m", "--wyoming-port", "10400", "--wyoming-lan"])
    assert (_wyoming_settings(args, "0.0.0.0").host, args.wyoming_port) == ("0.0.0.0", 10400)
    assert _wyoming_settings(parser.parse_args(["serve", "--models", "m"]), "0.0.0.0") is None
    from resonance.errors import ResonanceError

    with pytest.raises(ResonanceError, match="--wyoming-patient needs --wyoming-port"):
        _wyoming_settings(parser.parse_args(["serve", "--models", "m", "--wyoming-patient", "p1"]), "0.0.0.0")
    (tmp_path / "bundles").mkdir()  # a models folder (a missing one is said before any port is bound)
    with socket.socket() as taken:  # a port in use: one line before any model loads
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run_cli(
            "serve",
            "--models",
            tmp_path / "bundles",
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--wyoming-port",
            port,
        )
    assert proc.returncode == 2
    assert f"port {port} on 127.0.0.1 is already in use" in proc.stderr and "--wyoming-port" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_recordings_are_bounded_by_length_and_bytes_and_formats_checked():
    from resonance.runtime.server.wyoming import ProtocolError, Recording

    def chunk(n_bytes: int, rate: int = 16000, width: int = 2, channels: int = 1) -> AudioChunk:
        return AudioChunk(rate=rate, width=width, channels=channels, audio=bytes(n_bytes))

    by_length = Recording(16000, 2, 1, max_seconds=1.0, max_bytes=10**9)
    by_length.add(chunk(32000))  # exactly 1 s
    with pytest.raises(ProtocolError, match="longer than this server's limit of 1 s") as refused:
        by_length.add(chunk(2))
    assert refused.value.code == "audio_too_long"
    by_bytes = Recording(48000, 4, 2, max_seconds=30.0, max_bytes=1000)  # max_upload_mb binds first
    with pytest.raises(ProtocolError, match="max_upload_mb"):
        by_bytes.add(chunk(1001, 48000, 4, 2))
    for rate, width, channels in ((96000, 2, 1), (16000, 2, 6), (16000, 3, 1)):
        with pytest.raises(ProtocolError) as refused:
            Recording(rate, width, channels, 30.0, 10**6)
        assert refused.value.code == "unsupported_audio"
    stereo = Recording(16000, 2, 2, 5.0, 10**6)
    stereo.add(chunk(8, channels=2))
    with pytest.raises(ProtocolError, match="format differs"):
        stereo.add(chunk(4))
    assert stereo.samples().shape == (2,)  # 2 stereo frames -> 2 mono samples at 16 kHz
