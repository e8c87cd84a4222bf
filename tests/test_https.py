"""HTTPS on the LAN: `resonance serve --https` with the local CA (runtime/server/tls.py), the certificate a phone
downloads and trusts once, plain http beside it for apps, the QR code (decoded as a phone's camera reads it),
and cross-site posts refused. A real server on loopback; LAN names are mapped to 127.0.0.1, never dialled."""

from __future__ import annotations

import os
import pty
import re
import select
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
from helpers import (
    DEMO_DATA,
    Server,
    assert_error,
    decode_terminal_qr,
    stop_process,
    terminal_qr_block,
    write_config,
)

from resonance.runtime.device_config import load_device_config
from resonance.runtime.server.https import choose_certificate, is_loopback, plain_http_port, wants_tls

LAN_NAME = "care.lan"  # what the home router's DNS might call the server: allowed with --allow-host
SPEECH = DEMO_DATA / "take1" / "audio" / "0000_我想喝水.wav"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def sandbox(root: Path, tiny_bundle: Path):
    models = root / "bundles"
    models.mkdir()
    shutil.copytree(tiny_bundle, models / "p1")
    xdg = root / "xdg"  # the server's state folder: token and tls/ of this test only
    xdg.mkdir()
    return models, write_config(root / "test.yaml"), {"XDG_CONFIG_HOME": str(xdg)}, xdg / "resonance" / "tls"


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_bundle):
    root = tmp_path_factory.mktemp("https")
    models, config, env, tls_dir = sandbox(root, tiny_bundle)
    extra = [
        "--https",
        "--http-port",
        str(free_port()),
        "--allow-host",
        LAN_NAME,
        "--collect",
        str(root / "kept"),
    ]
    srv = Server(models, config, *extra, env=env)
    yield srv, tls_dir, root / "kept"
    srv.stop()


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def handshake(port: int, name: str, ca_file: Path) -> str:
    """A client that trusts only the local CA connects to 127.0.0.1 as if to ``name``."""
    context = ssl.create_default_context(cafile=str(ca_file))
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, context.wrap_socket(
        raw, server_hostname=name
    ) as conn:
        return conn.version()


def test_https_is_served_with_a_certificate_a_phone_trusting_the_ca_accepts(served):
    srv, tls_dir, _ = served
    assert srv.base.startswith("https://127.0.0.1:") and srv.verify == str(tls_dir / "ca.crt")
    port = port_of(srv.base)
    for name in (LAN_NAME, "localhost", "127.0.0.1", socket.gethostname().split(".")[0].lower() + ".local"):
        assert handshake(port, name, tls_dir / "ca.crt") in ("TLSv1.2", "TLSv1.3"), name
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(port, "evil.example", tls_dir / "ca.crt")
    health = srv.get("/health").json()
    assert health["https_port"] == port and health["ca_certificate"] is True
    assert "HTTPS: certificate authority of this server" in srv.output
    fingerprint = re.search(r"^  ((?:[0-9A-F]{2}:){31}[0-9A-F]{2})$", srv.output, re.M)
    assert fingerprint, srv.output
    for words in ("Android:", "Certificate Trust Settings", f"{srv.plain_base}/ca.crt"):
        assert words in srv.output


def test_the_ca_certificate_is_offered_and_never_a_key(served):
    srv, tls_dir, _ = served
    assert stat.S_IMODE((tls_dir / "ca.key").stat().st_mode) == 0o600
    for base in (srv.plain_base, srv.base):  # the phone's first visit is plain http: nothing to trust yet
        reply = requests.get(f"{base}/ca.crt", timeout=10, verify=srv.verify)
        assert reply.status_code == 200
        assert reply.content == (tls_dir / "ca.crt").read_bytes()
        assert reply.headers["Content-Type"] == "application/x-x509-ca-cert"
        assert 'filename="resonance-ca.crt"' in reply.headers["Content-Disposition"]
    keys = [(tls_dir / name).read_bytes() for name in ("ca.key", "server.key")]
    for path in (
        "/ca.key",
        "/server.key",
        "/tls/ca.key",
        "/static/../tls/ca.key",
        "/static/%2e%2e/%2e%2e/%2e%2e/tls/ca.key",
        "/ca.crt/../ca.key",
        "/static/ca.key",
    ):
        reply = srv.get(path)
        assert reply.status_code in (401, 403, 404), path
        assert b"PRIVATE KEY" not in reply.content and not any(key in reply.content for key in keys), path


def test_plain_http_beside_https_serves_apps(served):
    srv, _, _ = served
    assert srv.plain_base is not None
    reply = requests.post(
        f"{srv.plain_base}/transcribe",
        files={"file": ("c.wav", SPEECH.read_bytes(), "audio/wav")},
        timeout=120,
    )
    assert reply.status_code == 200, reply.text
    health = requests.get(f"{srv.plain_base}/health", timeout=10).json()
    assert health["https_port"] == port_of(srv.base)  # the page there links to the https one


def test_posts_from_another_sites_page_are_refused_and_write_nothing(served):
    srv, _, kept = served
    port = port_of(srv.base)
    files = {"file": ("r.wav", SPEECH.read_bytes(), "audio/wav")}
    form = {"text": "我想喝水", "patient": "p1"}
    for path, data in (("/feedback", form), ("/transcribe", {"patient": "p1"})):
        evil = srv.post(path, files=files, data=data, headers={"Origin": "https://evil.example"})
        assert_error(evil, 403, "cross_origin")
        downgraded = srv.post(path, files=files, data=data, headers={"Origin": f"http://{LAN_NAME}:{port}"})
        assert_error(downgraded, 403, "cross_origin")  # the same name over plain http is another origin
    assert not kept.exists() or not any(kept.rglob("*.wav"))
    own = {"Origin": f"https://{LAN_NAME}:{port}", "Host": f"{LAN_NAME}:{port}"}  # the page itself
    reply = srv.post("/feedback", files=files, data=form, headers=own)
    assert reply.status_code == 201, reply.text
    assert len(list(kept.rglob("*.wav"))) == 1


def read_until(fd: int, marker: str, timeout: float) -> str:
    output = b""
    deadline = time.monotonic() + timeout
    while marker.encode() not in output and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
    return output.decode("utf-8", "replace").replace("\r\n", "\n")


def test_the_qr_code_opens_the_https_page_signed_in_when_started_in_a_terminal(tmp_path, tiny_bundle):
    models, config, env, _ = sandbox(tmp_path, tiny_bundle)
    token_file = tmp_path / "token"
    cmd = [sys.executable, "-m", "resonance.cli", "serve", "--config", str(config), "--models", str(models)]
    cmd += ["--host", "127.0.0.1", "--port", "0", "--reload-interval", "0", "--https", "--auth"]
    cmd += ["--token-file", str(token_file)]
    main, child = pty.openpty()  # a terminal, as when the caregiver's helper runs it by hand
    proc = subprocess.Popen(
        cmd, stdin=child, stdout=child, stderr=child, env={**os.environ, **env, "PYTHONIOENCODING": "utf-8"}
    )
    os.close(child)
    try:
        output = read_until(main, "Ctrl+C", timeout=180)
    finally:
        stop_process(proc)
        os.close(main)
    page = re.search(r"scan the QR code with its camera\): (https://127\.0\.0\.1:\d+/)", output)
    assert page, output
    token = token_file.read_text(encoding="utf-8").strip()
    assert decode_terminal_qr(terminal_qr_block(output.splitlines())) == [f"{page.group(1)}#token={token}"]
    assert "the QR code signs the phone in" in output


def test_the_qr_code_opens_the_page_without_the_token_in_a_log(tmp_path, tiny_bundle):
    models, config, env, _ = sandbox(tmp_path, tiny_bundle)
    token_file = tmp_path / "token"
    srv = Server(models, config, "--https", "--auth", "--token-file", str(token_file), env=env)
    try:
        token = token_file.read_text(encoding="utf-8").strip()
        assert decode_terminal_qr(terminal_qr_block(srv.lines)) == [srv.base + "/"]
        assert "the page asks for the access token once" in srv.output
        banner_qr = "\n".join(terminal_qr_block(srv.lines))
        assert token not in banner_qr
    finally:
        srv.stop()


def test_where_https_and_plain_http_are_served():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.20")
    assert wants_tls("0.0.0.0") and wants_tls("192.168.1.20")  # the LAN: https by default
    assert not wants_tls("127.0.0.1") and wants_tls("127.0.0.1", https=True)
    assert not wants_tls("0.0.0.0", http=True)
    assert wants_tls("127.0.0.1", own_certificate=True)
    lan = load_device_config("pc-cpu")
    loop = lan.replace(host="127.0.0.1")
    cert = object()  # only "some certificate" matters here
    assert plain_http_port(lan, cert) == 8080  # beside https on the LAN
    assert plain_http_port(lan, None) is None  # the one listener is plain already
    assert plain_http_port(lan, cert, 0) is None  # --http-port 0: none
    assert plain_http_port(loop, cert) is None and plain_http_port(loop, cert, 9001) == 9001
    assert choose_certificate("127.0.0.1") is None  # plain http: no certificate made


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--cert", "x.pem"], "--cert and --key go together"),
        (["--http", "--cert", "x.pem", "--key", "y.pem"], "--http cannot go with --cert/--key"),
        (["--cert", "nope.pem", "--key", "nope.key"], "file not found"),
        (["--https", "--http"], "not allowed with argument"),
    ],
)
def test_tls_flags_that_cannot_work_are_one_clear_error(run_cli, tmp_path, flags, message):
    proc = run_cli("serve", "--models", tmp_path, "--host", "127.0.0.1", "--port", "0", *flags, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
