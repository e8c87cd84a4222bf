"""The LAN API the caregiver's app calls: Flask for HTTP, waitress to serve it, one Transcriber per patient.

Endpoints:
  GET  /                          the caregiver's web page (runtime/static: record or upload, see the text)
  GET  /health                    liveness, version, providers, number of patients (+ their ids if authorized)
  GET  /patients                  the patients this server has (id, base model, precision, metrics ...)
  POST /transcribe                multipart field ``file`` (+ optional ``patient``, ``mode``) -> {"text", ...}
                                  mode=both (default): text + the best known phrase ("phrase",
                                  "phrase_confidence", "phrases" = top-k [{text, confidence}],
                                  "phrase_rejected": "none of these"); mode=free: text only; mode=phrases:
                                  text = the accepted phrase or "" (runtime/phrases.py)
  POST /v1/audio/transcriptions   OpenAI-compatible: ``file``, ``model`` = patient id, ``response_format``

Every error is a real HTTP status with ``{"error": {"message", "hint", "code", "type"}}``. Explicit caps:
413 for bodies over ``max_upload_mb`` and audio over ``max_audio_seconds``; 503 + Retry-After when all
``max_concurrent_requests`` slots stay taken for ``queue_timeout_s``. Audio lives only in memory: uploads are
parsed into BytesIO (never a temp file) and waitress buffers bodies in RAM; nothing is written to disk
unless the caregiver turns on ``retain_dir`` (runtime/retention.py). Logs carry transcript lengths, not
transcripts, unless ``log_transcripts`` is on.
"""

from __future__ import annotations

import hmac
import io
import logging
import math
import os
import secrets
import socket
import stat
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

from flask import Flask, Request, Response, g, jsonify, request, send_from_directory
from werkzeug.exceptions import HTTPException

from resonance import __version__
from resonance.errors import AudioError, ResonanceError
from resonance.runtime.device_config import DeviceConfig
from resonance.runtime.models import InvalidPatientId, ModelRegistry, UnknownPatient
from resonance.runtime.phrases import MODES, NO_PHRASES
from resonance.runtime.retention import Retention

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000  # what resonance.audio.load_audio returns and the bundles expect
DEFAULT_MODE = "both"  # /transcribe: the free text and the best known phrase (one encoder pass)
OPENAI_DEFAULT_MODEL = "whisper-1"  # what OpenAI clients send by default: means "the default patient"
RESPONSE_FORMATS = ("json", "text", "verbose_json")
T = TypeVar("T")
EXTRA_THREADS = 4  # waitress threads beyond the transcription slots: /health etc. stay responsive when busy
STATIC_DIR = Path(__file__).resolve().parent / "static"  # the web page (package data)
# The page loads nothing from elsewhere (works offline) and runs no inline script: say so to the browser.
PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "object-src 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",  # revalidate: an upgraded server serves its new page at once
}


@dataclass(frozen=True)
class ServerSettings:
    """How the server behaves, apart from the model and its decoding (whisper.cpp's `server_params`)."""

    auth_token: Optional[str] = None  # bearer token clients must send; None = open (trusted home LAN)
    log_transcripts: bool = False  # log full transcripts; off: logs carry only their length (privacy)
    log_level: str = "INFO"  # level of the resonance loggers while serving
    reload_interval_s: float = 0.0  # re-scan the models folder this often for new/changed bundles; 0 = never
    retain_dir: Optional[Path] = (
        None  # keep each request's audio + result under DIR/<patient>/; None: nothing
    )


class ApiError(ResonanceError):
    """A request the server refuses, with its HTTP status and a stable machine-readable code."""

    def __init__(self, status: int, code: str, message: str, hint: str = "", headers: Optional[dict] = None):
        super().__init__(message, hint)
        self.status = status
        self.code = code
        self.headers = headers or {}


class InMemoryRequest(Request):
    """Werkzeug spools uploads over 500 KB to a temporary file; keep audio in RAM (size is capped anyway)."""

    def _get_file_stream(self, total_content_length, content_type, filename=None, content_length=None):
        return io.BytesIO()


def error_response(
    status: int, code: str, message: str, hint: str = "", headers: Optional[dict] = None
) -> Response:
    kind = "server_error" if status >= 500 else "invalid_request_error"  # OpenAI clients read `type`
    body = {"error": {"message": message, "hint": hint, "code": code, "type": kind}}
    response = jsonify(body)
    response.status_code = status
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


class _Slots:
    """At most ``n`` transcriptions at once, always on the same ``n`` threads; a request waits ``timeout``
    seconds for a slot, then gets 503.

    A pool rather than a semaphore around waitress's own threads: onnxruntime and malloc keep per-thread
    buffers, and letting every waitress thread transcribe in turn grew the server by ~45 MB per thread that
    ever ran the model (measured with `resonance loadtest`, 8 clients). The pool bounds that by ``n``.
    """

    def __init__(self, n: int, timeout: float) -> None:
        self._semaphore = threading.BoundedSemaphore(n)
        self._pool = ThreadPoolExecutor(max_workers=n, thread_name_prefix="transcribe")
        self._timeout = timeout
        self._lock = threading.Lock()
        self._mean_s = 1.0  # running mean of transcription time, for Retry-After

    def run(self, work: Callable[[], T]) -> T:
        """``work()`` on a transcription thread; ApiError 503 when no slot frees up in time."""
        self._acquire()
        started = time.perf_counter()
        try:
            return self._pool.submit(work).result()
        finally:
            self._release(time.perf_counter() - started)

    def _acquire(self) -> None:
        acquired = (
            self._semaphore.acquire(blocking=False)
            if self._timeout <= 0
            else self._semaphore.acquire(timeout=self._timeout)
        )
        if not acquired:
            retry = str(min(60, max(1, math.ceil(self._mean_s))))
            raise ApiError(
                503,
                "busy",
                "the server is busy transcribing other recordings",
                f"retry after {retry} s",
                {"Retry-After": retry},
            )

    def _release(self, seconds: float) -> None:
        with self._lock:
            self._mean_s = 0.8 * self._mean_s + 0.2 * seconds
        self._semaphore.release()


def rss_mb() -> Optional[float]:
    """Resident memory of this process (Linux /proc); None elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        return None
    return None


def create_app(
    registry: ModelRegistry, device_config: DeviceConfig, settings: Optional[ServerSettings] = None
) -> Flask:
    """The Flask app; it only translates HTTP to ``Transcriber.transcribe`` and back."""
    settings = settings or ServerSettings()
    app = Flask(__name__, static_folder=None)  # the page's files are served by static_file() below
    app.request_class = InMemoryRequest
    app.config["MAX_CONTENT_LENGTH"] = device_config.max_upload_bytes
    app.json.ensure_ascii = False  # Chinese transcripts as UTF-8, not \uXXXX
    slots = _Slots(device_config.max_concurrent_requests, device_config.queue_timeout_s)
    retention = Retention(settings.retain_dir, SAMPLE_RATE) if settings.retain_dir else None

    def _authorized() -> bool:
        """An open server, or the request carries its bearer token."""
        if not settings.auth_token:
            return True
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(
            token.strip().encode(), settings.auth_token.encode()
        )

    @app.before_request
    def _check_auth() -> Optional[Response]:
        g.started = time.perf_counter()
        g.log_fields = {}
        # Open: liveness, and the page itself (it holds no patient data and must load to ask for the token).
        if request.path in ("/", "/health") or request.path.startswith("/static/") or _authorized():
            return None
        header = request.headers.get("Authorization", "")
        return error_response(
            401,
            "unauthorized",
            "missing or wrong access token" if header else "this server needs an access token",
            "send the header 'Authorization: Bearer <token>' with the token `resonance serve --auth` printed",
            {"WWW-Authenticate": 'Bearer realm="resonance"'},
        )

    @app.after_request
    def _log_request(response: Response) -> Response:
        if request.path == "/" or request.path.startswith("/static/"):
            for name, value in PAGE_HEADERS.items():
                response.headers.setdefault(name, value)
        elapsed_ms = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
        fields = " ".join(f"{k}={v}" for k, v in g.get("log_fields", {}).items())
        log.info("%s %s %d %.0fms %s", request.method, request.path, response.status_code, elapsed_ms, fields)
        return response

    @app.errorhandler(ResonanceError)
    def _resonance_error(exc: ResonanceError) -> Response:
        if isinstance(exc, ApiError):
            return error_response(exc.status, exc.code, exc.message, exc.hint, exc.headers)
        if isinstance(exc, UnknownPatient):
            return error_response(404, "unknown_patient", exc.message, exc.hint)
        if isinstance(exc, InvalidPatientId):
            return error_response(400, "invalid_patient", exc.message, exc.hint)
        if isinstance(exc, AudioError):
            return error_response(400, "bad_audio", exc.message, exc.hint)
        return error_response(400, "bad_request", exc.message, exc.hint)

    @app.errorhandler(HTTPException)
    def _http_error(exc: HTTPException) -> Response:
        status = exc.code or 500
        if status == 413:
            limit = device_config.max_upload_mb
            return error_response(
                413,
                "too_large",
                f"the upload is larger than this server's limit of {limit:g} MB",
                "send a shorter recording, or 16 kHz mono 16-bit WAV; the limit is max_upload_mb in the device config",
            )
        code = (exc.name or "error").lower().replace(" ", "_")
        return error_response(status, code, exc.description or exc.name or "error")

    @app.errorhandler(Exception)
    def _unexpected(exc: Exception) -> Response:
        # A bug or a runtime failure (e.g. onnxruntime out of memory): answer 500, keep the traceback in the log,
        # and keep serving the other requests.
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_response(
            500, "internal_error", f"internal error: {type(exc).__name__}", "see the server's log; try again"
        )

    @app.get("/health")
    def health() -> Response:
        providers: List[str] = []
        for bundle in registry.bundles():
            for name in getattr(bundle.transcriber, "providers", ()):
                if name not in providers:
                    providers.append(name)
        body = dict(
            status="ok",
            version=__version__,
            device=device_config.name,
            providers=providers,
            patients=len(registry.patients),
            rss_mb=rss_mb(),
            retaining=retention is not None,  # whether recordings are kept on disk (serve --retain)
        )
        if _authorized():  # /health is open with --auth too (liveness): ids only for those who may see them
            body["patient_ids"] = sorted(registry.patients)
        return jsonify(**body)

    @app.get("/")
    def page() -> Response:
        return send_from_directory(STATIC_DIR, "index.html")

    @app.get("/static/<path:name>")
    def static_file(name: str) -> Response:
        return send_from_directory(STATIC_DIR, name)  # refuses '..' and absolute paths (404)

    @app.get("/patients")
    def patients() -> Response:
        return jsonify([_describe(bundle) for bundle in registry.bundles()])

    @app.post("/transcribe")
    def transcribe() -> Response:
        mode = request.form.get("mode") or DEFAULT_MODE
        if mode not in MODES:
            raise ApiError(
                400, "bad_mode", f"mode '{mode[:40]}' is not supported", f"use one of {', '.join(MODES)}"
            )
        upload = _upload()
        bundle = registry.get(request.form.get("patient") or None)
        result, duration_s = _run(bundle, upload, "/transcribe", mode)
        reply: Dict[str, Any] = {"text": result.text}
        if result.phrases is not None:
            reply.update(result.phrases.to_json())
            if result.phrases.reason == NO_PHRASES:
                reply["warning"] = (
                    f"patient {bundle.patient} has no phrase list: free transcription only "
                    "(add phrases with `resonance phrases add --bundle ...`)"
                )
        reply.update(
            mode=mode,
            patient=bundle.patient,
            duration_s=round(duration_s, 3),
            latency_ms=round((time.perf_counter() - g.started) * 1000, 1),
        )
        return jsonify(reply)

    @app.post("/v1/audio/transcriptions")
    def openai_transcriptions() -> Response:
        upload = _upload()
        response_format = request.form.get("response_format") or "json"
        if response_format not in RESPONSE_FORMATS:
            raise ApiError(
                400,
                "unsupported_response_format",
                f"response_format '{response_format[:40]}' is not supported",
                f"use one of {', '.join(RESPONSE_FORMATS)}",
            )
        model = request.form.get("model") or ""
        bundle = registry.get(None if model in ("", OPENAI_DEFAULT_MODEL) else model)
        language = request.form.get("language")
        if language and language != bundle.manifest.language:
            # A personal model is fine-tuned for one language; honour it rather than fail the client.
            log.debug(
                "ignoring language=%r: patient %s's model transcribes %s",
                language,
                bundle.patient,
                bundle.manifest.language,
            )
        result, duration_s = _run(bundle, upload, "/v1/audio/transcriptions")
        if response_format == "text":
            return Response(result.text + "\n", mimetype="text/plain")
        if response_format == "json":
            return jsonify(text=result.text)
        return jsonify(
            task="transcribe",
            language=result.language,
            duration=round(duration_s, 3),
            text=result.text,
            segments=[
                {
                    "id": 0,
                    "seek": 0,
                    "start": 0.0,
                    "end": round(duration_s, 3),
                    "text": result.text,
                    "tokens": list(result.tokens),
                    "temperature": 0.0,
                    "no_speech_prob": result.no_speech_prob,
                }
            ],
        )

    def _upload() -> bytes:
        if request.mimetype != "multipart/form-data":
            raise ApiError(
                415,
                "unsupported_media_type",
                f"expected a multipart/form-data upload, got '{request.mimetype or 'no content type'}'",
                "send the recording as a multipart form field named 'file' (curl -F file=@clip.wav ...)",
            )
        upload = request.files.get("file")
        if upload is None:
            others = sorted(set(request.files) | set(request.form))
            got = f" (got field(s) {others})" if others else ""
            raise ApiError(
                400,
                "missing_file",
                f"no form field 'file' in the upload{got}",
                "send the recording as a multipart form field named 'file' (curl -F file=@clip.wav ...)",
            )
        return upload.read()

    def _check_length(duration_s: float) -> None:
        if duration_s > device_config.max_audio_seconds:
            raise ApiError(
                413,
                "audio_too_long",
                f"the recording is {duration_s:.1f} s long; this server accepts up to "
                f"{device_config.max_audio_seconds:g} s",
                "send one short phrase per request (max_audio_seconds in the device config)",
            )

    def _run(bundle: Any, data: bytes, endpoint: str, mode: str = "free") -> Tuple[Any, float]:
        from resonance.audio import load_audio

        g.log_fields.update(patient=bundle.patient, bytes=len(data))
        header_s = _header_duration(data)
        if header_s is not None:
            _check_length(header_s)  # before decoding: an hour of 8-bit 8 kHz audio fits in 25 MB
        audio = load_audio(data, SAMPLE_RATE)  # AudioError -> 400
        duration_s = audio.size / SAMPLE_RATE
        g.log_fields["audio_s"] = f"{duration_s:.2f}"
        _check_length(duration_s)
        # 503 busy when every slot stays taken for queue_timeout_s
        result = slots.run(lambda: bundle.transcriber.transcribe(audio, mode=mode))
        g.log_fields["text_len"] = len(result.text)
        if settings.log_transcripts:
            g.log_fields["text"] = repr(result.text)
        if retention is not None:
            record = {
                "text": result.text,
                "mode": mode,
                **(result.phrases.to_json() if getattr(result, "phrases", None) is not None else {}),
                "patient": bundle.patient,
                "language": result.language,
                "duration_s": round(duration_s, 3),
                "no_speech_prob": result.no_speech_prob,
                "endpoint": endpoint,
                "received": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "model_created": bundle.manifest.created,  # which export of the patient's model heard it
            }
            retention.save_or_log(bundle.patient, audio, record)
        return result, duration_s

    return app


def _header_duration(data: bytes) -> Optional[float]:
    """Duration from the file header (no decoding), or None when libsndfile cannot read the header."""
    import soundfile as sf

    try:
        info = sf.info(io.BytesIO(data))
    except Exception:  # any unreadable header: load_audio decides, and explains, what is wrong with it
        return None
    return info.frames / info.samplerate if info.samplerate > 0 and info.frames >= 0 else None


def _describe(bundle: Any) -> Dict[str, Any]:
    manifest = bundle.manifest
    metrics = {k: v for k, v in (manifest.metrics or {}).items() if isinstance(v, (int, float, str, bool))}
    return {
        "id": bundle.patient,
        "base_model": manifest.base_model,
        "precision": manifest.precision,
        "language": manifest.language,
        "created": manifest.created,
        "metrics": metrics,  # scalar metrics only (CER before/after ...), not per-phrase details
        "n_phrases": len(manifest.phrases or []),
    }


# -- access token -------------------------------------------------------------------------------------------------


def default_token_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "resonance" / "token"


def load_or_create_token(path: Path) -> Tuple[str, bool]:
    """The server's bearer token from ``path`` (created, mode 0600, on first use). Returns (token, created)."""
    path = Path(path)
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if os.name == "posix" and mode & 0o077:
            raise ResonanceError(
                f"the token file {path} can be read by other users (mode {mode:o})", f"chmod 600 {path}"
            )
        token = path.read_text(encoding="utf-8").strip()
        if len(token) < 16:
            raise ResonanceError(
                f"the token file {path} holds no usable token", f"delete {path} to make a new one"
            )
        return token, False
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(
        str(tmp), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600
    )  # never world-readable, not even briefly
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(token + "\n")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # Python >= 3.8
        raise
    return token, True


# -- LAN address and serving -------------------------------------------------------------------------------------


def lan_addresses() -> List[str]:
    """This machine's LAN IPv4 address(es), best guess first; ['127.0.0.1'] when there is no network."""
    found: List[str] = []
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            # connect() on UDP sends no packet: the kernel only picks the interface that would route there.
            probe.connect(("10.254.254.254", 1))
            found.append(probe.getsockname()[0])
    except OSError:
        pass
    try:
        for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
            found.append(str(info[4][0]))
    except OSError:
        pass
    unique = [ip for i, ip in enumerate(found) if ip not in found[:i] and not ip.startswith(("127.", "0."))]
    return unique or ["127.0.0.1"]


def urls_for(host: str, port: int) -> List[str]:
    hosts = [*lan_addresses(), "127.0.0.1"] if host in ("0.0.0.0", "::", "") else [host]
    seen: List[str] = []
    for h in hosts:
        if h not in seen:
            seen.append(h)
    return [f"http://{h}:{port}/transcribe" for h in seen]


def qr_text(url: str) -> Optional[str]:
    """``url`` as a QR code drawn with block characters for a terminal; None without segno or a Unicode stdout.

    Two modules per character (half blocks) keep it small enough for an 80x24 terminal; the quiet zone
    (the white border scanners need) is part of the drawing.
    """
    try:
        import segno
    except ImportError:  # an optional nicety: the URL itself is printed anyway
        return None
    buf = io.StringIO()
    segno.make(url, error="m").terminal(out=buf, compact=True)
    text = buf.getvalue()
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):  # e.g. a Windows cp1252 console: no block characters
        return None
    return text


def serve(
    models_dir: Path,
    device_config: DeviceConfig,
    settings: Optional[ServerSettings] = None,
    port: Optional[int] = None,
    token_note: str = "",
) -> None:
    """Load every bundle under ``models_dir`` and serve the API with waitress until interrupted.

    ``port`` overrides the device config's (0 = any free port; the URL printed says which).
    """
    from waitress import create_server

    settings = settings or ServerSettings()
    logging.getLogger("resonance").setLevel(settings.log_level.upper())
    # onnxruntime >= 1.2x keeps usage telemetry (a device id, the OS, paths) in ~/.cache/Microsoft/... and
    # a session file in $TMPDIR, to upload when online. A patient's offline device writes nothing it was not
    # asked to: off unless the operator set the variable. onnxruntime reads it at import, i.e. just below.
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    registry = ModelRegistry(models_dir, device_config, poll_interval_s=settings.reload_interval_s)
    if not registry.patients:
        problems = "; ".join(f"{k}: {v}" for k, v in registry.failed.items()) or "it has no bundle folders"
        raise ResonanceError(
            f"no usable bundle in {models_dir} ({problems})",
            "export one with `resonance export --out <models>/<patient>` and copy the whole folder here",
        )
    app = create_app(registry, device_config, settings)
    body_cap = device_config.max_upload_bytes * 2 + (1 << 20)  # beyond Flask's JSON 413: waitress's own 413
    threads = device_config.max_concurrent_requests + EXTRA_THREADS
    server = create_server(
        app,
        host=device_config.host,
        port=device_config.port if port is None else port,
        threads=threads,
        max_request_body_size=body_cap,
        inbuf_overflow=body_cap,  # keep request bodies (audio) in RAM: waitress spills bigger ones to disk
        connection_limit=max(32, threads * 4),
        ident="resonance",
    )
    bound_port = int(server.effective_port)
    print(f"Resonance {__version__} on '{device_config.name}' ({device_config.description})")
    for bundle in registry.bundles():
        manifest = bundle.manifest
        used = ", ".join(getattr(bundle.transcriber, "providers", ()))
        print(
            f"  patient {bundle.patient}: {manifest.base_model}, {manifest.precision}, {manifest.language} on {used}"
        )
    for name, why in registry.failed.items():
        print(f"  SKIPPED {name}: {why}")
    urls = urls_for(device_config.host, bound_port)
    print("In the caregiver app, set the speech recognition (ASR) address to:")
    for url in urls:
        print(f"  {url}")
    qr = qr_text(urls[0])
    if qr:
        print(f"or scan this QR code of {urls[0]} in the app's settings page:")
        print(qr, end="" if qr.endswith("\n") else "\n")
    page = urls[0][: -len("/transcribe")] + "/"
    print(f"Caregiver web page (record or upload a clip): {page}")
    if settings.auth_token:
        print(f"Access token required ('Authorization: Bearer <token>'). {token_note}".rstrip())
    if settings.retain_dir:
        print(
            f"Keeping every recording and its transcript under {Path(settings.retain_dir).absolute()} (--retain)."
        )
    else:
        print("Recordings and transcripts are not saved to disk (turn on with --retain DIR).")
    if settings.reload_interval_s > 0:
        print(
            f"New or re-exported bundles in {models_dir} are picked up within {settings.reload_interval_s:g} s."
        )
    print("Press Ctrl+C to stop.", flush=True)
    try:
        server.run()
    finally:
        registry.stop_polling()
        server.close()
