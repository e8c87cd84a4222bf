"""mDNS discovery: `resonance serve --announce` found by `resonance discover`, on the loopback interface only.

Nothing here sends multicast beyond this machine: the server listens on 127.0.0.1, so it announces there
alone (discovery.interfaces_for), and every browse is given ``--interface 127.0.0.1``. Where multicast does
not work on loopback, the tests are skipped with that reason.
"""

from __future__ import annotations

import json
import re
import shutil
import sys
import time

import pytest
from helpers import Server, write_config

zeroconf = pytest.importorskip("zeroconf", reason="zeroconf (the [discovery] extra) is not installed")

LOOPBACK = "127.0.0.1"


@pytest.fixture(scope="module")
def loopback_multicast():
    """Skip unless an mDNS service registered on 127.0.0.1 is found by a browser on 127.0.0.1."""
    from resonance.runtime.discovery import Announcer, Service, discover

    kind = "_resonance-probe._tcp.local."
    announcer = Announcer([LOOPBACK])
    try:
        announcer.announce(Service(kind, f"probe {time.time_ns()}", 9, [LOOPBACK]))
        found = discover(1.5, [LOOPBACK], kind)
    finally:
        announcer.close()
    if not found:
        pytest.skip("multicast on the loopback interface does not work here (mDNS cannot be tested)")


# Class-scoped, so it has stopped before test_a_stopped_server_says_goodbye starts its own: both are
# "Resonance on <this host>", and zeroconf renames the second only if the first answers one of its 3 probes
# (500 ms apart) in time, which a loaded CI machine does not promise (then one name had two servers, and the
# browse resolved the other one).
@pytest.fixture(scope="class")
def server(tmp_path_factory, tiny_bundle, loopback_multicast):
    root = tmp_path_factory.mktemp("announced")
    models = root / "bundles"
    models.mkdir()
    shutil.copytree(tiny_bundle, models / "p1")
    env = {"XDG_CONFIG_HOME": str(root / "xdg")}  # the local CA of --https goes there
    srv = Server(
        models,
        write_config(root / "t.yaml"),
        "--https",
        "--announce",
        "--auth",
        "--wyoming-port",
        "0",
        env=env,
    )
    yield srv
    srv.stop()


def discover_cli(run_cli, *args, expect_an_answer: bool = True):
    """``resonance discover`` on loopback for 2 s; when a server should answer and none did, once more for 6 s
    (on a loaded machine, the suite beside other work, a resolve can take longer than 2 s)."""
    proc = run_cli("discover", "--interface", LOOPBACK, "--seconds", "2", *args, timeout=60)
    if expect_an_answer and proc.returncode == 1 and "answered within" in proc.stderr:
        proc = run_cli("discover", "--interface", LOOPBACK, "--seconds", "6", *args, timeout=60)
    return proc, [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


class TestAnAnnouncedServer:
    """One announced HTTPS server with a token and a Wyoming port, shared by the tests that only look."""

    def test_discover_finds_the_announced_server_with_how_to_connect(self, server, run_cli):
        assert re.search(
            r"Announced by mDNS on 127\.0\.0\.1 only as 'Resonance on [^']+' \(_resonance\._tcp\)",
            server.output,
        )
        proc, found = discover_cli(run_cli, "--json")
        assert proc.returncode == 0, proc.stderr
        (entry,) = [f for f in found if f["url"] == server.base + "/"]
        assert entry["name"].startswith("Resonance on ")
        props = entry["properties"]
        assert props["scheme"] == "https" and props["auth"] == "token" and props["openai"] == "/v1"
        banner_fingerprint = re.search(
            r"fingerprint \(in its details\) must be\s+(\S+)", server.output
        ).group(1)
        assert props["cert_sha256"] == banner_fingerprint  # an app can check the CA it is offered
        assert "p1" not in json.dumps(entry)  # patients are never announced
        text = run_cli("discover", "--interface", LOOPBACK, "--seconds", "2", timeout=60)
        assert f"{entry['name']}: {server.base}/  (access token needed; certificate SHA-256" in text.stdout

    def test_home_assistant_finds_the_wyoming_port(self, server, run_cli):
        port = int(
            re.search(r"Wyoming protocol\): host \S+ port (\d+)", server.output.replace(",", "")).group(1)
        )
        assert "the Wyoming port (_wyoming._tcp)" in server.output
        proc, found = discover_cli(run_cli, "--wyoming", "--json")
        assert proc.returncode == 0, proc.stderr
        assert any(f["port"] == port and f["addresses"] == [LOOPBACK] for f in found), found


def test_a_stopped_server_says_goodbye(tmp_path, tiny_bundle, run_cli, loopback_multicast):
    models = tmp_path / "bundles"
    models.mkdir()
    shutil.copytree(tiny_bundle, models / "p1")
    srv = Server(models, write_config(tmp_path / "t.yaml"), "--announce")
    url = srv.base + "/"
    try:
        # Registering probes the name first (~1-2 s): browse once the server says it is announced.
        deadline = time.monotonic() + 30
        while "Announced by mDNS" not in srv.output and time.monotonic() < deadline:
            time.sleep(0.2)
        found = discover_cli(run_cli, "--json")[1]
        if not any(f["url"] == url for f in found):  # another test's server answered first: once more
            found = discover_cli(run_cli, "--json")[1]
        assert any(f["url"] == url for f in found), found
    finally:
        srv.stop()
    _, found = discover_cli(run_cli, "--json", expect_an_answer=False)
    assert all(f["url"] != url for f in found)


def test_announcing_defaults_to_the_lan_and_needs_zeroconf_only_when_asked(monkeypatch, capsys):
    from resonance.cli import build_parser
    from resonance.errors import ResonanceError
    from resonance.runtime import discovery
    from resonance.runtime.cli import _announce

    parser = build_parser()
    plain = parser.parse_args(["serve", "--models", "m"])
    assert _announce(plain, "0.0.0.0") is True
    assert _announce(plain, LOOPBACK) is False  # nobody else could reach it
    assert _announce(parser.parse_args(["serve", "--models", "m", "--announce"]), LOOPBACK) is True
    assert _announce(parser.parse_args(["serve", "--models", "m", "--no-announce"]), "0.0.0.0") is False
    assert discovery.interfaces_for("0.0.0.0") is None and discovery.interfaces_for(LOOPBACK) == [LOOPBACK]
    monkeypatch.setitem(sys.modules, "zeroconf", None)  # not installed
    assert _announce(plain, "0.0.0.0") is False
    assert "pip install zeroconf" in capsys.readouterr().err
    with pytest.raises(ResonanceError, match="needs the zeroconf package"):
        discovery.require_zeroconf()


def test_discover_with_nothing_to_find_says_what_to_check(run_cli, monkeypatch, capsys):
    from resonance import cli
    from resonance.runtime import discovery

    asked = []
    monkeypatch.setattr(discovery, "discover", lambda *a: asked.append(a) or [])
    assert cli.main(["discover", "--wyoming", "--seconds", "0.5", "--interface", LOOPBACK]) == 1
    assert asked == [(0.5, [LOOPBACK], discovery.WYOMING_SERVICE_TYPE)]
    assert "no Wyoming port answered within 0.5 s" in capsys.readouterr().err
    bad = run_cli("discover", "--seconds", "0", timeout=60)
    assert bad.returncode == 2 and "--seconds 0 is out of range" in bad.stderr


def test_a_network_that_refuses_mdns_is_one_banner_line_not_a_dead_server(monkeypatch):
    from resonance.runtime import discovery
    from resonance.runtime.server.context import ServerSettings
    from resonance.runtime.server.run import start_announcing

    def no_multicast(interfaces):
        raise OSError(19, "No such device")

    monkeypatch.setattr(discovery, "Announcer", no_multicast)
    announcer, lines = start_announcing("0.0.0.0", 8000, ServerSettings(), None, None, None)
    assert announcer is None and lines == [
        "Not announced by mDNS (OSError: [Errno 19] No such device): apps need the address above"
    ]

    closed = []

    class Refusing:
        def __init__(self, interfaces):
            pass

        def announce(self, service):
            raise RuntimeError("name conflict")

        def close(self):
            closed.append(True)

    monkeypatch.setattr(discovery, "Announcer", Refusing)
    announcer, lines = start_announcing(LOOPBACK, 8000, ServerSettings(), None, None, None)
    assert announcer is None and closed == [True] and "RuntimeError: name conflict" in lines[0]
