"""The Wyoming protocol (Home Assistant's local voice pipeline) beside HTTP, in the same event loop.

Home Assistant's Wyoming integration connects, sends ``describe`` (answered with ``info``: each patient is an
ASR model with its language), then ``transcribe`` (the pipeline's language; a model name, i.e. a patient, only
from other clients: Home Assistant sends none, so with several patients ``--wyoming-patient`` says whose voice
this is), ``audio-start``, ``audio-chunk``... and ``audio-stop``; the answer is one ``transcript``.

The same rules as the HTTP front: the same bundles (the registry), the same transcription slots (a recording
waits for one on the event loop, then runs on a slot thread), the audio length cap counted while the chunks
arrive (past ``max_audio_seconds`` the connection gets an ``error`` and is closed: nothing more is kept), and
events read with bounds (a line, its data and payload are capped before they are read; an idle connection is
closed). Wyoming has no authentication: the listener binds to loopback unless the operator asks for the LAN
(``serve --wyoming-lan``); then anyone on the LAN may transcribe with it, and ``--auth`` cannot cover it.

What the transcript says (``answer``): ``phrase`` (default) sends the patient's phrase-board phrase when the
board accepts one (so Home Assistant's sentence for 帮我开灯 matches even when the free transcription is a
character off), else the free transcription; ``text`` always sends the free transcription.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import time
from dataclasses import dataclass
from typing import Any, Dict, List, NamedTuple, Optional, Set

import numpy as np
from wyoming.asr import Transcribe, Transcript
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_write_event
from wyoming.info import AsrModel, AsrProgram, Attribution, Describe, Info
from wyoming.ping import Ping, Pong

from resonance import __version__
from resonance.audio import load_audio
from resonance.constants import SAMPLE_RATE, WYOMING_PORT
from resonance.errors import ResonanceError
from resonance.runtime.server.context import ServerContext
from resonance.runtime.server.slots import Busy

log = logging.getLogger(__name__)

ANSWERS = ("phrase", "text")  # what a transcript carries: see the module doc
MAX_LINE_BYTES = 64 * 1024  # an event's JSON header line
MAX_DATA_BYTES = 64 * 1024  # its JSON data block
MAX_PAYLOAD_BYTES = 1024 * 1024  # one payload (Home Assistant sends 1024-sample chunks: 2 KB)
IDLE_TIMEOUT_S = 30.0  # a connection that sends no event for this long is closed
MAX_CONNECTIONS = 16  # open Wyoming connections (Home Assistant uses one at a time); beyond, new ones close
LINGER_IDLE_S = 1.0  # after an error: drop the connection when the client pauses this long ...
LINGER_MAX_S = 5.0  # ... or after this long in all
SAMPLE_WIDTHS = {2: np.int16, 4: np.int32}  # bytes per sample -> PCM type (Home Assistant sends 16-bit)


class ProtocolError(Exception):
    """A client broke the protocol or a bound: it gets an ``error`` event and the connection is closed."""

    def __init__(self, text: str, code: str = "bad_request") -> None:
        super().__init__(text)
        self.text = text
        self.code = code


@dataclass(frozen=True)
class WyomingSettings:
    """Where the Wyoming listener is and what its transcripts say."""

    host: str = "127.0.0.1"  # loopback: Wyoming has no authentication (``serve --wyoming-lan`` opens the LAN)
    port: int = WYOMING_PORT  # 0 = any free port
    answer: str = "phrase"  # "phrase" or "text" (ANSWERS)
    # The patient transcribed when a request names none (Home Assistant never does); None: the only one.
    patient: Optional[str] = None

    def __post_init__(self) -> None:
        if self.answer not in ANSWERS:
            raise ResonanceError(
                f"unknown Wyoming answer '{self.answer}'", f"use one of {', '.join(ANSWERS)}"
            )


async def read_event(reader: asyncio.StreamReader) -> Optional[Event]:
    """The next event, its sizes checked before anything is read (wyoming's own reader trusts them); None at
    the end of the stream."""
    try:
        line = await reader.readline()
    except (asyncio.LimitOverrunError, ValueError):
        raise ProtocolError(f"event header longer than {MAX_LINE_BYTES} bytes") from None
    if not line:
        return None
    try:
        header = json.loads(line)
        kind = header["type"]
        data = header.get("data") or {}
        data_length = int(header.get("data_length") or 0)
        payload_length = int(header.get("payload_length") or 0)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise ProtocolError("not a Wyoming event (a JSON line with a 'type')") from None
    if not isinstance(kind, str) or not isinstance(data, dict):
        raise ProtocolError("not a Wyoming event (a JSON line with a 'type')")
    if not 0 <= data_length <= MAX_DATA_BYTES or not 0 <= payload_length <= MAX_PAYLOAD_BYTES:
        raise ProtocolError(
            f"event '{kind[:40]}' announces {data_length} data / {payload_length} payload bytes "
            f"(at most {MAX_DATA_BYTES} / {MAX_PAYLOAD_BYTES})"
        )
    if data_length:
        try:
            more = json.loads(await reader.readexactly(data_length))
        except ValueError:
            raise ProtocolError("an event's data block is not JSON") from None
        if not isinstance(more, dict):
            raise ProtocolError("an event's data block is not a JSON object")
        data.update(more)
    payload = await reader.readexactly(payload_length) if payload_length else None
    return Event(type=kind, data=data, payload=payload)


def primary_language(tag: Optional[str]) -> str:
    """``zh-CN`` / ``zh_Hans`` -> ``zh``: a personal model's language is a Whisper code."""
    return (tag or "").replace("_", "-").split("-")[0].strip().lower()


class Recording:
    """The PCM of one ``audio-start`` .. ``audio-stop``, bounded by the device's audio length cap."""

    def __init__(self, rate: int, width: int, channels: int, max_seconds: float, max_bytes: int) -> None:
        if width not in SAMPLE_WIDTHS:
            raise ProtocolError(f"{8 * width}-bit audio is not supported", "unsupported_audio")
        if not 8000 <= rate <= 48000 or channels not in (1, 2):
            raise ProtocolError(
                f"audio of {rate} Hz, {channels} channels is not supported (8-48 kHz, mono or stereo)",
                "unsupported_audio",
            )
        self.rate, self.width, self.channels = rate, width, channels
        self.max_seconds = max_seconds
        # The audio length cap, and never more bytes than an HTTP upload may have (max_upload_mb).
        self.max_bytes = min(int(max_seconds * rate) * width * channels, max_bytes)
        self.chunks: List[bytes] = []
        self.size = 0

    def add(self, chunk: AudioChunk) -> None:
        if (chunk.rate, chunk.width, chunk.channels) != (self.rate, self.width, self.channels):
            raise ProtocolError("an audio chunk's format differs from its audio-start", "bad_audio")
        self.size += len(chunk.audio)
        if self.size > self.max_bytes:  # counted as it arrives: a long stream is never held in memory
            raise ProtocolError(
                f"the recording is longer than this server's limit of {self.max_seconds:g} s "
                "(max_audio_seconds, max_upload_mb in the device config)",
                "audio_too_long",
            )
        self.chunks.append(chunk.audio)

    def samples(self) -> np.ndarray:
        """float32 mono at 16 kHz."""
        data = b"".join(self.chunks)
        frame = self.width * self.channels
        pcm = np.frombuffer(data[: len(data) - len(data) % frame], dtype=SAMPLE_WIDTHS[self.width])
        scale = float(np.iinfo(SAMPLE_WIDTHS[self.width]).max) + 1.0
        audio = (pcm.astype(np.float32) / scale).reshape(-1, self.channels)
        return load_audio(audio, SAMPLE_RATE, source_rate=self.rate)


class WyomingServer:
    """Serves Wyoming on a socket bound beforehand (``bind`` in serve(): a port in use fails before models
    load); ``serve`` is a coroutine function the HTTP front runs in its event loop."""

    def __init__(self, sock: socket.socket, context: ServerContext, settings: WyomingSettings) -> None:
        if settings.patient and settings.patient not in context.registry.patients:
            raise ResonanceError(
                f"--wyoming-patient {settings.patient}: no such patient in the models folder",
                f"use one of {', '.join(context.registry.patients)}",
            )
        self.sock = sock
        self.context = context
        self.settings = settings
        self._connections: Set[asyncio.Task] = set()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def banner_lines(self, http_has_token: bool) -> List[str]:
        """What `resonance serve` prints about this listener: where Home Assistant finds it, who may use it."""
        from resonance.runtime.server.lan import lan_addresses

        host = self.settings.host
        loopback = host.startswith("127.") or host in ("::1", "localhost")
        shown = lan_addresses()[0] if host in ("0.0.0.0", "::", "") else host
        answer = (
            "the phrase board's phrase when it accepts one, else the free text"
            if self.settings.answer == "phrase"
            else "the free transcription"
        )
        lines = [
            f"Home Assistant (Wyoming protocol): host {shown}, port {self.port}; transcripts: {answer} "
            f"(--wyoming-answer)"
        ]
        patients = self.context.registry.patients
        if self.settings.patient:
            lines.append(f"  Home Assistant's requests are transcribed for patient {self.settings.patient}")
        elif len(patients) > 1:
            lines.append(
                f"  {len(patients)} patients and Home Assistant names none: start with --wyoming-patient <id> "
                "to choose whose voice it hears (until then its requests get an error)"
            )
        if loopback:
            lines.append(
                "  loopback only: Wyoming has no access token; --wyoming-lan opens it to Home Assistant on "
                "another machine"
            )
        else:
            token = " (--auth does not cover it)" if http_has_token else ""
            lines.append(f"  open to the LAN without a token: the Wyoming protocol has none{token}")
        return lines

    async def serve(self) -> None:
        server = await asyncio.start_server(self._connected, sock=self.sock, limit=MAX_LINE_BYTES)
        try:
            await server.serve_forever()
        finally:
            server.close()
            for task in list(self._connections):
                task.cancel()

    async def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if len(self._connections) >= MAX_CONNECTIONS:
            log.warning("wyoming: %d connections open, closing a new one", len(self._connections))
            writer.close()
            return
        if task is not None:
            self._connections.add(task)
        session = Session(self.context, self.settings)
        try:
            while True:
                event = await asyncio.wait_for(read_event(reader), IDLE_TIMEOUT_S)
                if event is None:
                    break
                for reply in await session.handle(event):
                    await async_write_event(reply, writer)
        except ProtocolError as exc:
            log.info("wyoming: %s", exc.text)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await async_write_event(Error(text=exc.text, code=exc.code).event(), writer)
                await _linger(reader, writer)
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, ConnectionError):
            pass  # idle, or the client went away
        finally:
            if task is not None:
                self._connections.discard(task)
            writer.close()


async def _linger(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """After an error, stop writing and discard what the client is still sending for a while, so it reads the
    error instead of a connection reset (closing a socket with unread data answers with RST)."""
    with contextlib.suppress(OSError, RuntimeError):
        writer.write_eof()
    loop = asyncio.get_running_loop()
    until = loop.time() + LINGER_MAX_S
    with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
        while loop.time() < until:
            if not await asyncio.wait_for(reader.read(64 * 1024), LINGER_IDLE_S):
                break


class Done(NamedTuple):
    """A recording's transcript and what the log says about it."""

    text: str
    answer: str  # "phrase": the board's accepted phrase; "text": the free transcription
    patient: str
    language: str
    audio_s: float


class Session:
    """One connection's state: the chosen patient and the recording being received."""

    def __init__(self, context: ServerContext, settings: WyomingSettings) -> None:
        self.context = context
        self.settings = settings
        self.patient: Optional[str] = None
        self.recording: Optional[Recording] = None

    async def handle(self, event: Event) -> List[Event]:
        if Describe.is_type(event.type):
            return [self.info().event()]
        if Ping.is_type(event.type):
            return [Pong(text=Ping.from_event(event).text).event()]
        if Transcribe.is_type(event.type):
            self.patient = self.choose(Transcribe.from_event(event))
            return []
        if AudioStart.is_type(event.type):
            start = AudioStart.from_event(event)
            self.recording = self._recording(start.rate, start.width, start.channels)
            return []
        if AudioChunk.is_type(event.type):
            chunk = AudioChunk.from_event(event)
            if self.recording is None:  # a client may skip audio-start: the chunk carries the format
                self.recording = self._recording(chunk.rate, chunk.width, chunk.channels)
            self.recording.add(chunk)
            return []
        if AudioStop.is_type(event.type):
            recording, self.recording = self.recording, None
            if recording is None:
                raise ProtocolError("audio-stop without audio", "empty_audio")
            return [await self.transcribe(recording)]
        log.debug("wyoming: ignoring a '%s' event", event.type[:40])
        return []

    def _recording(self, rate: int, width: int, channels: int) -> Recording:
        config = self.context.device_config
        return Recording(rate, width, channels, config.max_audio_seconds, config.max_upload_bytes)

    def info(self) -> Info:
        """Each patient as an ASR model with its language."""
        whisper = Attribution(
            name="OpenAI Whisper, fine-tuned on the patient's voice", url="https://github.com/openai/whisper"
        )
        models = [
            AsrModel(
                name=entry.patient,
                description=f"{entry.patient}'s personal model ({entry.manifest.precision})",
                attribution=whisper,
                installed=True,
                languages=[entry.manifest.language],
                version=str(entry.manifest.created),
            )
            for entry in self.context.registry.entries()
        ]
        program = AsrProgram(
            name="resonance",
            description="Resonance: speech recognition tuned to one person's voice, offline",
            attribution=Attribution(name="Resonance", url=""),
            installed=True,
            version=__version__,
            models=models,
        )
        return Info(asr=[program])

    def choose(self, request: Transcribe) -> Optional[str]:
        """The patient of a ``transcribe``: the one it names, else ``--wyoming-patient``, else the only one.
        Checked now, so a mistake is an error before the audio is sent: an unknown patient, several and none
        chosen, another language. (Home Assistant names no model: it sends only the pipeline's language.)"""
        entries = {entry.patient: entry for entry in self.context.registry.entries()}
        wanted = request.name or self.settings.patient
        if wanted:
            entry = entries.get(wanted)
            if entry is None:
                raise ProtocolError(f"no model for patient '{wanted[:64]}'", "unknown_patient")
        elif len(entries) == 1:
            entry = next(iter(entries.values()))
        else:
            raise ProtocolError(
                f"this server has {len(entries)} patients and Home Assistant names none: start it with "
                "--wyoming-patient <id>",
                "no_patient",
            )
        language = primary_language(request.language)
        if language and language != primary_language(entry.manifest.language):
            raise ProtocolError(
                f"patient {entry.patient}'s model transcribes '{entry.manifest.language}', not "
                f"'{request.language}': set the voice assistant's language to match",
                "unsupported_language",
            )
        return entry.patient

    async def transcribe(self, recording: Recording) -> Event:
        """The recording's transcript, on a transcription slot. Failures (no slot within the queue timeout, a
        runtime error) are :class:`ProtocolError`: an ``error`` event, then the connection closes, because
        Home Assistant reads until a transcript or the end of the connection."""
        slots = self.context.slots
        try:
            await slots.acquire(slots.deadline())
        except Busy as exc:
            raise ProtocolError(f"{exc.message}: {exc.hint}", "busy") from None
        started = time.monotonic()
        try:
            loop = asyncio.get_running_loop()
            done = await loop.run_in_executor(slots.executor, self._work, recording)
        except ResonanceError as exc:
            raise ProtocolError(exc.message, "transcription_failed") from None
        except Exception as exc:  # a bug or a runtime failure: answer, keep the traceback, keep serving
            log.exception("wyoming: unexpected error while transcribing")
            raise ProtocolError(f"internal error: {type(exc).__name__}", "internal_error") from None
        finally:
            slots.release(time.monotonic() - started)
        log.info(
            "wyoming transcribe patient=%s audio_s=%.2f text_len=%d answer=%s",
            done.patient,
            done.audio_s,
            len(done.text),
            done.answer,
        )
        return Transcript(text=done.text, language=done.language).event()

    def _work(self, recording: Recording) -> Done:
        """On a slot thread: decode the PCM, load the patient's model if needed, transcribe, keep (retention)."""
        audio = recording.samples()
        bundle = self.context.registry.get(self.patient)
        mode = "both" if self.settings.answer == "phrase" else "free"
        result = bundle.transcriber.transcribe(audio, mode=mode)
        text, answer = result.text, "text"
        if result.phrases is not None and result.phrases.best:
            text, answer = (
                result.phrases.best,
                "phrase",
            )  # the board accepted one of the patient's own phrases
        if self.context.retention is not None:
            record: Dict[str, Any] = {
                **result.to_json(),
                "patient": bundle.patient,
                "endpoint": "wyoming",
                "received": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "model_created": bundle.manifest.created,
            }
            self.context.retention.save_or_log(bundle.patient, audio, record)
        return Done(text, answer, bundle.patient, bundle.manifest.language, audio.size / SAMPLE_RATE)
