"""The local CA and the server certificate (runtime/server/tls.py), checked by real TLS handshakes: Python's
ssl module (OpenSSL) verifies the chain, the names and the key usage as a phone's browser would."""

from __future__ import annotations

import datetime
import hashlib
import os
import socket
import ssl
import stat
import sys
import threading
from pathlib import Path

import pytest

from resonance.errors import ResonanceError
from resonance.runtime.server import tls

DNS = ["care-box", "care-box.local", "localhost"]
LAN = ["192.168.1.20"]  # only ever a name in a certificate: every connection below goes to 127.0.0.1


def addresses(*lan: str):
    return tls.server_names(list(lan), hostname="care-box")[1]


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def handshake(cert: tls.ServerCertificate, server_hostname: str) -> str:
    """A TLS handshake on loopback: the server sends ``cert``'s chain, a client trusting only the local CA
    checks it for ``server_hostname`` (a DNS name or an IP address). Returns the negotiated protocol."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert.cert_file, cert.key_file)
    client_ctx = ssl.create_default_context(cafile=str(cert.ca_file))
    listener = socket.create_server(("127.0.0.1", 0))
    errors = []

    def serve() -> None:
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls_conn:
                tls_conn.recv(1)
        except (ssl.SSLError, OSError) as exc:  # the client refused us: its error says why
            errors.append(exc)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        with socket.create_connection(listener.getsockname(), timeout=10) as raw, client_ctx.wrap_socket(
            raw, server_hostname=server_hostname
        ) as conn:
            conn.sendall(b"x")
            return conn.version()
    finally:
        thread.join(timeout=10)
        listener.close()


def test_first_start_makes_a_ca_and_a_server_certificate_a_client_trusts(tmp_path):
    folder = tmp_path / "tls"
    cert = tls.local_certificate(folder, DNS, addresses(*LAN))
    assert cert.status == "created"
    assert {p.name for p in folder.iterdir()} == {"ca.crt", "ca.key", "server.crt", "server.key"}
    assert mode(folder) == 0o700
    assert mode(folder / "ca.key") == mode(folder / "server.key") == 0o600
    assert set(cert.names) >= {"care-box", "care-box.local", "localhost", "192.168.1.20", "127.0.0.1", "::1"}
    for name in ("care-box.local", "care-box", "192.168.1.20", "127.0.0.1", "localhost"):
        assert handshake(cert, name).startswith("TLS")
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(cert, "evil.example")  # a name it was not issued for
    # The fingerprint phones show: SHA-256 of the CA certificate's DER bytes.
    der = ssl.PEM_cert_to_DER_cert(cert.ca_file.read_text())
    assert cert.fingerprint == ":".join(f"{b:02X}" for b in hashlib.sha256(der).digest())
    assert datetime.timedelta(days=396) < cert.not_after - datetime.datetime.now(datetime.timezone.utc)
    served = tls.ca_certificate_pem(cert)
    assert served == (folder / "ca.crt").read_bytes() and b"PRIVATE KEY" not in served


def test_later_starts_reuse_it_and_a_new_address_renews_only_the_server_certificate(tmp_path):
    folder = tmp_path / "tls"
    first = tls.local_certificate(folder, DNS, addresses(*LAN))
    ca_bytes, server_bytes = (folder / "ca.crt").read_bytes(), (folder / "server.crt").read_bytes()
    again = tls.local_certificate(folder, DNS, addresses(*LAN))
    assert again.status == "reused"
    assert (folder / "server.crt").read_bytes() == server_bytes
    moved = tls.local_certificate(folder, DNS, addresses("10.0.0.7"))  # a new DHCP lease
    assert moved.status.startswith("renewed") and "10.0.0.7" in moved.status
    assert "10.0.0.7" in moved.names
    assert (folder / "ca.crt").read_bytes() == ca_bytes and moved.fingerprint == first.fingerprint
    assert handshake(moved, "10.0.0.7").startswith("TLS")  # the phone's trust carries over


def test_a_server_certificate_near_its_end_is_renewed_and_the_ca_outlives_it(tmp_path):
    folder = tmp_path / "tls"
    tls.local_certificate(folder, DNS, addresses(*LAN))
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=380)
    renewed = tls.local_certificate(folder, DNS, addresses(*LAN), now=later)
    assert renewed.status.startswith("renewed: it expires")
    assert renewed.not_after > later + datetime.timedelta(days=390)


def test_a_server_certificate_of_another_ca_or_a_broken_one_is_replaced(tmp_path):
    folder, other = tmp_path / "tls", tmp_path / "other"
    tls.local_certificate(folder, DNS, addresses(*LAN))
    tls.local_certificate(other, DNS, addresses(*LAN))
    for name in ("server.crt", "server.key"):
        (folder / name).write_bytes((other / name).read_bytes())
    assert tls.local_certificate(folder, DNS, addresses(*LAN)).status == "renewed: another CA signed it"
    (folder / "server.crt").write_text("garbage")
    cert = tls.local_certificate(folder, DNS, addresses(*LAN))
    assert cert.status == "renewed: the old one could not be read"
    assert handshake(cert, "care-box.local").startswith("TLS")


def test_a_damaged_ca_is_an_error_and_is_never_replaced(tmp_path):
    folder = tmp_path / "tls"
    tls.local_certificate(folder, DNS, addresses(*LAN))
    (folder / "ca.key").write_text("not a key")
    with pytest.raises(ResonanceError) as caught:
        tls.local_certificate(folder, DNS, addresses(*LAN))
    assert "cannot be read" in caught.value.message and "move" in caught.value.hint
    assert (folder / "ca.key").read_text() == "not a key"
    (folder / "ca.key").unlink()
    with pytest.raises(ResonanceError, match=r"incomplete: ca\.key is missing"):
        tls.local_certificate(folder, DNS, addresses(*LAN))
    assert (folder / "ca.crt").is_file()


def test_a_ca_key_others_can_read_is_refused(tmp_path):
    folder = tmp_path / "tls"
    tls.local_certificate(folder, DNS, addresses(*LAN))
    os.chmod(folder / "ca.key", 0o644)
    with pytest.raises(ResonanceError) as caught:
        tls.local_certificate(folder, DNS, addresses(*LAN))
    assert "chmod 600" in caught.value.hint


def test_the_users_own_certificate_is_checked_before_use(tmp_path):
    mine = tls.local_certificate(tmp_path / "mine", DNS, addresses(*LAN))
    other = tls.local_certificate(tmp_path / "other", DNS, addresses(*LAN))
    own = tls.user_certificate(mine.cert_file, mine.key_file)
    assert own.status == "your own" and own.ca_file is None and tls.ca_certificate_pem(own) is None
    assert "care-box.local" in own.names
    with pytest.raises(ResonanceError, match="is not the key of"):
        tls.user_certificate(mine.cert_file, other.key_file)
    with pytest.raises(ResonanceError, match="file not found"):
        tls.user_certificate(tmp_path / "nope.crt", mine.key_file)
    with pytest.raises(ResonanceError, match="not a PEM certificate"):
        tls.user_certificate(mine.key_file, mine.key_file)
    with pytest.raises(ResonanceError, match="expired"):
        tls.user_certificate(mine.cert_file, mine.key_file, now=mine.not_after + datetime.timedelta(days=1))


def test_the_check_says_what_the_certificate_misses_and_when_it_ends(tmp_path):
    cert = tls.local_certificate(tmp_path / "tls", DNS, addresses(*LAN))
    check = tls.check_certificate(cert.cert_file, DNS, addresses(*LAN))
    assert check.missing == () and 396 < check.days_left < 398 and not check.expired
    check = tls.check_certificate(cert.cert_file, [*DNS, "new-name"], addresses("10.0.0.9"))
    assert check.missing == ("new-name", "10.0.0.9")


def test_names_cover_the_host_its_mdns_name_and_loopback():
    dns, ips = tls.server_names(["192.168.1.20", "0.0.0.0", "not-an-ip"], hostname="Care-Box.home.")
    assert dns == ["care-box.home", "care-box", "care-box.local", "localhost"]
    assert ips == ["192.168.1.20", "127.0.0.1", "::1"]
    assert tls.server_names([], hostname="")[0] == ["localhost"]
    assert tls.server_names([], hostname="bad name_")[0] == ["localhost"]  # not a DNS name: left out


def test_without_cryptography_the_error_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "cryptography", None)  # import cryptography -> ImportError
    with pytest.raises(ResonanceError) as caught:
        tls.local_certificate(tmp_path / "tls", DNS, addresses(*LAN))
    assert "cryptography" in caught.value.message and "--http" in caught.value.hint
    assert not (tmp_path / "tls").exists()
