"""HTTPS on the home LAN with nothing to buy: a local certificate authority (CA) and a server certificate.

Browsers give a page the microphone only in a secure context (https, or localhost), so the caregiver's phone
needs https to reach the server's page with a working record button. No public CA certifies a LAN address, so
the server makes its own CA once; the phone trusts that CA once (README: "Trust the server on a phone"), and
every server certificate it signs after that is trusted too. The X.509 work is the `cryptography` package's.

Files, in the server's state folder (``~/.config/resonance/tls/``, beside the token; folder 0700)::

    ca.crt      the CA's certificate: the one file a phone installs (the server offers it at /ca.crt)
    ca.key      the CA's private key (0600): never leaves this folder, signs server certificates
    server.crt  the server certificate, then the CA's (the chain the listener sends)
    server.key  the server certificate's key (0600)

The CA is made once and kept: a new one would have to be trusted again on every phone, so an unreadable CA is
an error to fix, never silently replaced. The server certificate is derived and re-issued whenever it no
longer fits: its names miss one of the current addresses (a new DHCP lease), it expires within
:data:`RENEW_BEFORE_DAYS`, or another CA signed it. Keys are EC P-256 (fast to make, accepted by Android and
iOS); the server certificate follows Apple's rules for TLS server certificates (names in the
subjectAltName, serverAuth extended key usage, SHA-256, at most 825 days, here 397).
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import socket
import ssl
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional, Sequence, Tuple

from resonance.errors import ResonanceError
from resonance.fsutil import write_bytes_atomic, write_bytes_new

CA_CERT = "ca.crt"
CA_KEY = "ca.key"
SERVER_CERT = "server.crt"
SERVER_KEY = "server.key"
KEY_MODE = 0o600  # private keys: readable by the server's user only
DIR_MODE = 0o700
CA_DAYS = 10 * 365  # a phone trusts the CA once; it should outlive the device
SERVER_DAYS = 397  # the most browsers accept for any server certificate (CA/Browser Forum, Apple, Chrome)
RENEW_BEFORE_DAYS = 30  # re-issue the server certificate at start when it expires sooner than this
CLOCK_SKEW = datetime.timedelta(hours=1)  # valid from an hour ago: a phone whose clock is a little behind
LOOPBACK_ADDRESSES = ("127.0.0.1", "::1")

INSTALL_HINT = "pip install cryptography (it installs with resonance-asr), or serve plain http with --http"


@dataclass(frozen=True)
class ServerCertificate:
    """What the HTTPS listener loads, what the banner prints and what ``/ca.crt`` serves."""

    cert_file: Path  # the server certificate, followed by its CA's (PEM)
    key_file: Path  # its private key (PEM, 0600)
    ca_file: Optional[Path]  # the certificate a phone installs; None with the user's own (--cert/--key)
    fingerprint: str  # SHA-256 of ca_file's certificate (of cert_file's with the user's own), AA:BB:…
    names: Tuple[str, ...]  # the server certificate's DNS names and IP addresses
    not_after: datetime.datetime  # when the server certificate expires (UTC)
    status: str  # what happened at this start: "created", "renewed: …", "reused" or "your own"


def default_tls_dir() -> Path:
    """``tls/`` in the server's state folder (beside the token; XDG_CONFIG_HOME is honoured)."""
    from resonance.runtime.server.auth import default_token_path

    return default_token_path().parent / "tls"


def server_names(addresses: Sequence[str], hostname: Optional[str] = None) -> Tuple[List[str], List[str]]:
    """(DNS names, IP addresses) a phone may use for this machine: its host name and ``<name>.local``
    (mDNS, what phones resolve on a home LAN), localhost, ``addresses`` and the loopback addresses."""
    host = (hostname if hostname is not None else socket.gethostname()).strip().rstrip(".").lower()
    dns: List[str] = []
    short = host.split(".")[0]
    for name in (host, short, f"{short}.local" if short else "", "localhost"):
        if name and _is_dns_name(name) and name not in dns:
            dns.append(name)
    ips: List[str] = []
    for address in [*addresses, *LOOPBACK_ADDRESSES]:
        try:
            text = str(ipaddress.ip_address(address))
        except ValueError:
            continue
        if text not in ips and text not in ("0.0.0.0", "::"):
            ips.append(text)
    return dns, ips


def local_certificate(
    directory: Path,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    now: Optional[datetime.datetime] = None,
) -> ServerCertificate:
    """The local CA (made on first use) and a server certificate for these names, from ``directory``.

    Reuses the server certificate while it covers every name and address, has more than
    :data:`RENEW_BEFORE_DAYS` left and was signed by this CA; otherwise issues a new one (atomically).
    """
    x509, _, _ = _crypto()
    now = now or _utc_now()
    directory = Path(directory).expanduser()
    directory.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    ca_cert, ca_key, ca_created = _load_or_create_ca(directory, now)
    wanted = _names(dns_names, ip_addresses)
    reason = _why_renew(directory, ca_cert, wanted, now)
    if reason:
        _issue_server_certificate(directory, ca_cert, ca_key, dns_names, ip_addresses, now)
    server = x509.load_pem_x509_certificate((directory / SERVER_CERT).read_bytes())
    status = "created" if ca_created else (f"renewed: {reason}" if reason else "reused")
    return ServerCertificate(
        cert_file=directory / SERVER_CERT,
        key_file=directory / SERVER_KEY,
        ca_file=directory / CA_CERT,
        fingerprint=fingerprint(ca_cert),
        names=tuple(_certificate_names(server)),
        not_after=_not_after(server),
        status=status,
    )


def user_certificate(
    cert_file: Path, key_file: Path, now: Optional[datetime.datetime] = None
) -> ServerCertificate:
    """The caregiver's own certificate (``--cert/--key``), checked before the server starts: both readable
    PEM, the key belongs to the certificate, and it has not expired."""
    x509, serialization, _ = _crypto()
    cert_file, key_file = Path(cert_file).expanduser(), Path(key_file).expanduser()
    for path, flag in ((cert_file, "--cert"), (key_file, "--key")):
        if not path.is_file():
            raise ResonanceError(f"{flag} {path}: file not found", f"pass the PEM file of your {flag[2:]}")
    try:
        cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    except ValueError as exc:
        raise ResonanceError(
            f"--cert {cert_file} is not a PEM certificate ({exc})",
            "pass the certificate in PEM form (-----BEGIN CERTIFICATE-----)",
        ) from exc
    try:
        key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ResonanceError(
            f"--key {key_file} is not an unencrypted PEM private key ({exc})",
            "pass the key in PEM form without a passphrase (openssl pkey -in KEY -out plain.key)",
        ) from exc
    if _public_bytes(key.public_key()) != _public_bytes(cert.public_key()):
        raise ResonanceError(
            f"--key {key_file} is not the key of --cert {cert_file}",
            "pass the key the certificate was made for",
        )
    not_after = _not_after(cert)
    if not_after <= (now or _utc_now()):
        raise ResonanceError(
            f"--cert {cert_file} expired on {not_after:%Y-%m-%d}", "renew it, or leave out --cert/--key"
        )
    return ServerCertificate(
        cert_file, key_file, None, fingerprint(cert), tuple(_certificate_names(cert)), not_after, "your own"
    )


@dataclass(frozen=True)
class CertificateCheck:
    """How a server certificate fits this machine now (``resonance doctor``)."""

    names: Tuple[str, ...]
    missing: Tuple[str, ...]  # wanted names and addresses the certificate does not cover
    not_after: datetime.datetime
    days_left: float

    @property
    def expired(self) -> bool:
        return self.days_left <= 0


def check_certificate(
    cert_file: Path,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    now: Optional[datetime.datetime] = None,
) -> CertificateCheck:
    """Which of the names are missing from ``cert_file`` and how long it has left; ResonanceError when it
    cannot be read."""
    x509, _, _ = _crypto()
    try:
        cert = x509.load_pem_x509_certificate(Path(cert_file).read_bytes())
    except (OSError, ValueError) as exc:
        raise ResonanceError(
            f"cannot read the server certificate {cert_file}: {exc}",
            "start `resonance serve` to make a new one",
        ) from exc
    names = _certificate_names(cert)
    missing = tuple(n for n in _names(dns_names, ip_addresses) if n not in names)
    not_after = _not_after(cert)
    days_left = (not_after - (now or _utc_now())).total_seconds() / 86400
    return CertificateCheck(tuple(names), missing, not_after, days_left)


def require_cryptography() -> None:
    """Nothing when `cryptography` imports; else the ResonanceError that says how to get it."""
    _crypto()


def certificate_fingerprint(path: Path) -> str:
    """SHA-256 of the PEM certificate at ``path`` (what a phone shows for the CA it installed)."""
    x509, _, _ = _crypto()
    try:
        cert = x509.load_pem_x509_certificate(Path(path).read_bytes())
    except (OSError, ValueError) as exc:
        raise ResonanceError(
            f"cannot read the certificate {path} ({exc})", "restore it from a backup"
        ) from exc
    return fingerprint(cert)


def ssl_context(certificate: ServerCertificate) -> ssl.SSLContext:
    """The listener's TLS context for ``certificate``: TLS 1.2 or newer (every phone of the last decade)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(certificate.cert_file), str(certificate.key_file))
    except (OSError, ssl.SSLError) as exc:
        raise ResonanceError(
            f"cannot load the certificate {certificate.cert_file} with its key: {exc}",
            "check --cert/--key, or move the tls folder away to make a new certificate",
        ) from exc
    return context


def fingerprint(cert: Any) -> str:
    """SHA-256 of the certificate, as phones and browsers show it: 32 hex pairs joined by ':'."""
    _, _, hashes = _crypto()
    return ":".join(f"{b:02X}" for b in cert.fingerprint(hashes.SHA256()))


def ca_certificate_pem(server_certificate: ServerCertificate) -> Optional[bytes]:
    """The bytes ``/ca.crt`` serves: the CA's certificate only (checked: never a key), or None."""
    if server_certificate.ca_file is None:
        return None
    data = server_certificate.ca_file.read_bytes()
    if b"PRIVATE KEY" in data or not data.startswith(b"-----BEGIN CERTIFICATE-----"):
        raise ResonanceError(
            f"{server_certificate.ca_file} is not a certificate", "delete the tls folder's server files"
        )
    return data


# -- the CA ---------------------------------------------------------------------------------------------------


def _load_or_create_ca(directory: Path, now: datetime.datetime) -> Tuple[Any, Any, bool]:
    """(certificate, key, created): the CA in ``directory``, made there when neither file exists."""
    x509, serialization, _ = _crypto()
    cert_path, key_path = directory / CA_CERT, directory / CA_KEY
    if not cert_path.exists() and not key_path.exists():
        cert, key = _new_ca(now)
        try:
            # The key first and never over another: two servers starting at once keep the first CA.
            write_bytes_new(key_path, _private_pem(key), mode=KEY_MODE)
            write_bytes_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        except FileExistsError:
            return (*_load_or_create_ca(directory, now)[:2], False)
        return cert, key, True
    move_away = f"move {directory} away to make a new CA (every phone must then trust the new one)"
    for path in (cert_path, key_path):
        if not path.is_file():
            raise ResonanceError(
                f"the local CA in {directory} is incomplete: {path.name} is missing", move_away
            )
    _check_private(key_path)
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError) as exc:
        raise ResonanceError(f"the local CA in {directory} cannot be read ({exc})", move_away) from exc
    if _public_bytes(key.public_key()) != _public_bytes(cert.public_key()):
        raise ResonanceError(f"{key_path} is not the key of {cert_path}", move_away)
    if _not_after(cert) <= now + datetime.timedelta(days=RENEW_BEFORE_DAYS):
        raise ResonanceError(f"the local CA in {directory} expires on {_not_after(cert):%Y-%m-%d}", move_away)
    return cert, key, False


def _new_ca(now: datetime.datetime) -> Tuple[Any, Any]:
    x509, _, hashes = _crypto()
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    # The host name and date in the name: what the caregiver sees in the phone's list of trusted CAs.
    label = f"Resonance local CA ({socket.gethostname()[:40]}, {now:%Y-%m-%d})"
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, label),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Resonance"),
        ]
    )
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


# -- the server certificate -----------------------------------------------------------------------------------


def _why_renew(directory: Path, ca_cert: Any, wanted: List[str], now: datetime.datetime) -> str:
    """Why the server certificate in ``directory`` must be (re-)issued, or "" when it still fits."""
    x509, serialization, _ = _crypto()
    cert_path, key_path = directory / SERVER_CERT, directory / SERVER_KEY
    if not cert_path.is_file() or not key_path.is_file():
        return "no server certificate yet"
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = serialization.load_pem_private_key(key_path.read_bytes(), password=None)
    except (ValueError, TypeError):
        return "the old one could not be read"
    if _public_bytes(key.public_key()) != _public_bytes(cert.public_key()):
        return "its key did not match"
    if cert.issuer != ca_cert.subject or not _signed_by(cert, ca_cert):
        return "another CA signed it"
    missing = [n for n in wanted if n not in _certificate_names(cert)]
    if missing:
        return f"new name(s) or address(es) {', '.join(missing)}"
    if _not_after(cert) <= now + datetime.timedelta(days=RENEW_BEFORE_DAYS):
        return f"it expires on {_not_after(cert):%Y-%m-%d}"
    return ""


def _issue_server_certificate(
    directory: Path,
    ca_cert: Any,
    ca_key: Any,
    dns_names: Sequence[str],
    ip_addresses: Sequence[str],
    now: datetime.datetime,
) -> None:
    x509, serialization, hashes = _crypto()
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()
    alt_names: List[Any] = [x509.DNSName(n) for n in dns_names]
    alt_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in ip_addresses]
    common_name = (list(dns_names) or list(ip_addresses) or ["resonance"])[0][:64]
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(ca_cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW)
        .not_valid_after(now + datetime.timedelta(days=SERVER_DAYS))
        .add_extension(x509.SubjectAlternativeName(alt_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    # The key first: a crash between the two writes leaves a mismatch that the next start re-issues.
    write_bytes_atomic(directory / SERVER_KEY, _private_pem(key), mode=KEY_MODE)
    write_bytes_atomic(directory / SERVER_CERT, cert.public_bytes(pem) + ca_cert.public_bytes(pem))


# -- small helpers --------------------------------------------------------------------------------------------


def _crypto() -> Tuple[Any, Any, Any]:
    """(x509, serialization, hashes) from `cryptography`, or a ResonanceError that says how to get it."""
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
    except ImportError as exc:  # e.g. a device where no wheel fits and nothing can build it
        raise ResonanceError(f"HTTPS needs the 'cryptography' package ({exc})", INSTALL_HINT) from exc
    return x509, serialization, hashes


def _names(dns_names: Sequence[str], ip_addresses: Sequence[str]) -> List[str]:
    return [*(n.lower() for n in dns_names), *(str(ipaddress.ip_address(a)) for a in ip_addresses)]


def _certificate_names(cert: Any) -> List[str]:
    from cryptography import x509

    try:
        alt = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    dns = [n.lower() for n in alt.get_values_for_type(x509.DNSName)]
    return [*dns, *(str(a) for a in alt.get_values_for_type(x509.IPAddress))]


def _signed_by(cert: Any, issuer: Any) -> bool:
    from cryptography.exceptions import InvalidSignature

    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):  # another issuer name, key type or signature
        return False
    return True


def _not_after(cert: Any) -> datetime.datetime:
    return cert.not_valid_after_utc


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def _private_pem(key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _public_bytes(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_private(path: Path) -> None:
    mode = stat.S_IMODE(path.stat().st_mode)
    if os.name == "posix" and mode & 0o077:
        raise ResonanceError(
            f"the key file {path} can be read by other users (mode {mode:o})", f"chmod 600 {path}"
        )


def _is_dns_name(name: str) -> bool:
    labels = name.split(".")
    return len(name) <= 253 and all(
        0 < len(label) <= 63 and label.replace("-", "").isalnum() and label.isascii() for label in labels
    )
