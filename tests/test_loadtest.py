"""`resonance loadtest` against a real tiny-model server: mixed good/bad uploads, zero unexpected 5xx."""

from __future__ import annotations

import json
import re
import shutil
import socket

import numpy as np
import pytest
from helpers import Server, front_in_thread, write_config

from resonance.errors import ResonanceError
from resonance.runtime.loadtest import LoadtestReport, LoadtestSettings, build_cases, run_loadtest


@pytest.fixture(scope="module")
def server(tmp_path_factory, tiny_bundle):
    root = tmp_path_factory.mktemp("loadtest")
    models = root / "bundles"
    models.mkdir()
    shutil.copytree(tiny_bundle, models / "p1")
    srv = Server(models, write_config(root / "test.yaml", max_concurrent_requests=2, queue_timeout_s=30))
    yield srv
    srv.stop()


def test_mixed_load_gets_no_unexpected_5xx(server):
    # 40 requests are too few to hold memory to the 10 % target (the 1000-request run in the README does);
    # here the verdict is about statuses, and the memory readings must be there.
    settings = LoadtestSettings(
        url=server.base,
        clients=2,
        requests=40,
        max_seconds=120,
        bad_fraction=0.4,
        server_pid=server.proc.pid,
        max_rss_growth=0.5,
    )
    report = run_loadtest(settings)
    summary = report.summary()
    print(summary)
    assert len(report.outcomes) == 40
    assert report.unexpected_5xx == []
    assert report.connection_errors == []
    assert report.ok, summary
    counts = report.status_counts
    assert counts.get(200, 0) > 0  # good clips were transcribed …
    assert counts.get(400, 0) + counts.get(415, 0) > 0  # … and bad ones refused with a 4xx
    assert report.latency_ms(0.5) > 0
    assert report.rss_start_mb > 10 and report.rss_before_mb > 10 and report.rss_after_mb > 10
    assert report.warmup_requests == 8 and report.warmup_unexpected == 0  # 4 per client, not counted
    assert server.alive


def test_every_bad_case_is_refused_with_its_status(server):
    """Each generated bad upload, once: the loadtest's expectations match what the server really does."""
    settings = LoadtestSettings(url=server.base)
    good, bad = build_cases(settings, np.random.default_rng(0))
    import requests

    for case in good + bad:
        response = requests.post(
            server.base + "/transcribe",
            data=case.body,
            headers={"Content-Type": case.content_type},
            timeout=60,
        )
        assert response.status_code in case.expect, (case.name, response.text)


def test_the_cli_prints_the_numbers_and_exits_0(server, run_cli):
    proc = run_cli(
        "loadtest", server.base, "--clients", "2", "--requests", "12", "--patient", "p1", "--warmup", "3"
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"requests: 12 in [\d.]+ s = [\d.]+ req/s", proc.stdout)
    assert re.search(r"p50 [\d.]+ ms, p99 [\d.]+ ms", proc.stdout)
    assert "unexpected 5xx: 0" in proc.stdout
    assert re.search(
        r"server RSS: [\d.]+ MB at start, [\d.]+ MB after 3 warm-up requests, [\d.]+ MB", proc.stdout
    )
    assert "result: OK" in proc.stdout


def test_a_wrong_expectation_fails_the_run(server):
    """The report is not always OK: an unknown patient turns every good clip into a 404."""
    report = run_loadtest(
        LoadtestSettings(url=server.base, clients=1, requests=4, bad_fraction=0, patient="nobody")
    )
    assert not report.ok
    assert report.status_counts == {404: 4}
    assert "UNEXPECTED 404" in report.summary()


def test_memory_growth_after_warm_up_fails_the_run():
    """The flat-memory target is part of the verdict, measured from the warmed-up server."""
    grown = LoadtestReport(rss_start_mb=100.0, rss_before_mb=200.0, rss_after_mb=230.0, warmup_requests=8)
    assert grown.rss_growth == pytest.approx(0.15) and not grown.ok
    assert "growth +15.0 % > 10 %: FAILED" in grown.summary()
    flat = LoadtestReport(rss_start_mb=100.0, rss_before_mb=200.0, rss_after_mb=205.0, max_rss_growth=0.1)
    assert flat.ok and "growth +2.5 %" in flat.summary()  # the 100 -> 200 MB warm-up is not growth
    assert LoadtestReport().ok and "unknown" in LoadtestReport().summary()  # no reading: no verdict on memory


def test_real_clips_from_a_folder(server, tmp_path, demo_data):
    report = run_loadtest(
        LoadtestSettings(
            url=server.base, clients=2, requests=6, bad_fraction=0, audio_dir=demo_data / "audio"
        )
    )
    assert report.status_counts == {200: 6}


def test_remote_hosts_are_refused_unless_allowed():
    with pytest.raises(ResonanceError, match="not this machine"):
        run_loadtest(LoadtestSettings(url="http://192.168.1.20:8000"))
    with pytest.raises(ResonanceError, match="http://"):
        run_loadtest(LoadtestSettings(url="ftp://127.0.0.1"))
    with pytest.raises(ResonanceError):
        LoadtestSettings(url="http://127.0.0.1:1", clients=0)


def test_a_wrong_address_is_one_clear_error_before_any_request(https_port):
    """The LAN server's HTTPS port (it redirects plain http to https), an https:// URL, or nothing listening:
    one error naming the plain-http port, not a run of 1000 failed requests (a new user's audit)."""
    for url, says in (
        (f"http://127.0.0.1:{https_port}", "is the server's HTTPS port"),
        (f"https://127.0.0.1:{https_port}", "talks plain http, not https"),
    ):
        with pytest.raises(ResonanceError, match=says) as error:
            run_loadtest(LoadtestSettings(url=url, clients=1, requests=5))
        assert "8080" in error.value.hint
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        free = unused.getsockname()[1]
    with pytest.raises(ResonanceError, match="nothing answers"):
        run_loadtest(LoadtestSettings(url=f"http://127.0.0.1:{free}", clients=1, requests=5))


@pytest.fixture
def https_port(tmp_path):
    """A listener serving HTTPS as `serve` does on the LAN (the plain-http redirect included)."""
    from resonance.runtime.server.tls import local_certificate, ssl_context

    certificate = local_certificate(tmp_path / "tls", ["localhost"], ["127.0.0.1"])

    async def app(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with front_in_thread(app, ssl_context(certificate)) as port:
        yield port


def test_bounded_in_time(server):
    report = run_loadtest(LoadtestSettings(url=server.base, clients=1, requests=10_000, max_seconds=1.0))
    assert 0 < len(report.outcomes) < 10_000
    assert report.elapsed_s < 30
    json.dumps(report.status_counts)  # plain data, printable


def test_the_probe_attacks_and_reports_every_case(server):
    """`resonance probe` (issue #12's hostile cases), small and short: every case answered as it should be."""
    pytest.importorskip("av", reason="the decompression bomb is an M4A made with PyAV")
    from resonance.runtime.probe import ProbeSettings, run_probe

    settings = ProbeSettings(
        url=server.base,
        server_pid=server.proc.pid,
        bombs=2,
        bomb_seconds=300,
        idle_connections=5,
        slow_connections=3,
        unfinished_uploads=3,
        clients=2,
        seconds=4,
    )
    report = run_probe(settings)
    table = report.table()
    print(table)
    rows = {row.case.split(" x")[0]: row for row in report.rows}
    assert rows["decompression bomb"].statuses == [413, 413]
    assert set(rows["unfinished 50 MB uploads without a token"].statuses) == {413}  # an open server: the cap
    assert rows["transcribing clients"].count(200, 300) > 0
    assert set(rows["transcribing clients"].statuses) <= {200, 503}
    assert rows["/health under all of it"].sent > 0 and rows["/health under all of it"].dropped == 0
    assert report.unexpected_5xx == 0
    assert report.bomb_growth_mb is not None and report.bomb_growth_mb <= 100
    assert report.rss_idle_mb and report.rss_after_mb
    for name in ("peak RSS under the bombs, over idle", "/health p99 under load", "unexpected 5xx"):
        assert name in table
    assert re.search(r"^result: (OK|FAILED)$", table, re.M)


def test_the_probe_refuses_another_machine():
    from resonance.runtime.probe import ProbeSettings, run_probe

    with pytest.raises(ResonanceError, match=r"refusing to load-test 192\.0\.2\.1"):
        run_probe(ProbeSettings(url="http://192.0.2.1:8000"))
