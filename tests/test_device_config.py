"""Device configs: every packaged target obeys the one schema; bad files fail naming the key and the file."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml
from helpers import PACKAGED_CONFIGS

from resonance.constants import PRECISIONS
from resonance.errors import ResonanceError
from resonance.runtime.decoding import DecodingOptions
from resonance.runtime.device_config import (
    KNOWN_PROVIDERS,
    SETTINGS,
    DeviceConfig,
    list_device_configs,
    load_device_config,
)

TARGETS = ["pc-cpu", "pc-cuda", "jetson-orin-nano", "jetson-agx-orin"]


def test_the_four_targets_are_packaged():
    assert list_device_configs() == sorted(TARGETS)


@pytest.mark.parametrize("name", TARGETS)
class TestEveryTarget:
    """The same checks for every device (STYLE 8)."""

    def test_loads_by_name_and_by_path_to_the_same_config(self, name):
        by_name = load_device_config(name)
        by_path = load_device_config(PACKAGED_CONFIGS / f"{name}.yaml")
        assert isinstance(by_name, DeviceConfig)
        assert by_name == by_path
        assert by_name.name == name

    def test_lists_only_what_differs_from_the_defaults_each_with_a_comment(self, name):
        text = (PACKAGED_CONFIGS / f"{name}.yaml").read_text(encoding="utf-8")
        data = yaml.safe_load(text)
        assert set(data) <= set(SETTINGS)
        defaults = DeviceConfig(name="defaults")
        lines = text.splitlines()
        for key in data:
            index = next(i for i, line in enumerate(lines) if line.startswith(f"{key}:"))
            assert lines[index - 1].startswith("#"), f"{name}.yaml: no comment above '{key}'"
            if key not in ("name", "description"):
                assert getattr(load_device_config(name), key) != getattr(defaults, key), (
                    f"{name}.yaml sets '{key}' to its default: leave it out"
                )

    def test_values_are_sane_for_serving(self, name):
        config = load_device_config(name)
        assert config.providers[-1] == "CPUExecutionProvider"  # always a last resort
        assert set(config.providers) <= set(KNOWN_PROVIDERS)
        assert config.precision in PRECISIONS
        assert config.intra_op_threads >= 0
        assert 1 <= config.max_concurrent_requests <= 8
        assert 0 < config.max_audio_seconds <= 30  # one Whisper window: what a phrase needs
        # The upload cap must admit the longest allowed clip as 48 kHz stereo 32-bit float WAV.
        assert config.max_upload_bytes >= config.max_audio_seconds * 48000 * 2 * 4
        assert config.queue_timeout_s >= 0
        assert 1 <= config.port <= 65535
        assert config.host == "0.0.0.0"  # reachable from the caregiver's phone on the LAN
        if "jetson" in name:
            assert config.providers[0] == "TensorrtExecutionProvider"
        if config.precision == "int8":
            assert config.providers == ("CPUExecutionProvider",)  # int8 MatMuls have no CUDA kernels


def _write(tmp_path: Path, changes: dict, drop: tuple = ()) -> Path:
    data = yaml.safe_load((PACKAGED_CONFIGS / "pc-cpu.yaml").read_text(encoding="utf-8"))
    data.update(changes)
    for key in drop:
        del data[key]
    path = tmp_path / "custom.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def test_a_custom_file_with_the_same_schema_loads(tmp_path):
    config = load_device_config(_write(tmp_path, {"name": "my-box", "port": 9000, "max_upload_mb": 10}))
    assert (config.name, config.port, config.max_upload_bytes) == ("my-box", 9000, 10 * 1024 * 1024)
    assert config.source.endswith("custom.yaml")
    # a number written with an exponent and no dot, as most tools accept it (YAML 1.1 makes it a string)
    (tmp_path / "exp.yaml").write_text("max_audio_seconds: 6e1\nmax_upload_mb: 1E1\n", encoding="utf-8")
    config = load_device_config(tmp_path / "exp.yaml")
    assert (config.max_audio_seconds, config.max_upload_bytes) == (60.0, 10 * 1024 * 1024)


@pytest.mark.parametrize(
    ("changes", "drop", "key"),
    [
        ({"max_threads": 4}, (), "max_threads"),  # unknown key (a typo must not fall back to a default)
        ({"intra_op_threads": -1}, (), "intra_op_threads"),
        ({"intra_op_threads": "4"}, (), "intra_op_threads"),  # a string, not an int
        ({"intra_op_threads": 2.5}, (), "intra_op_threads"),
        ({"max_concurrent_requests": 0}, (), "max_concurrent_requests"),
        ({"max_concurrent_requests": True}, (), "max_concurrent_requests"),  # YAML bool is not a count
        ({"providers": ["CudaExecutionProvider"]}, (), "providers"),  # misspelt provider
        ({"providers": []}, (), "providers"),
        ({"providers": "CPUExecutionProvider"}, (), "providers"),  # not a list
        ({"providers": ["CPUExecutionProvider", "CPUExecutionProvider"]}, (), "providers"),
        ({"precision": "int4"}, (), "precision"),
        ({"int8_preset": "avx3"}, (), "int8_preset"),
        ({"port": 0}, (), "port"),
        ({"port": 70000}, (), "port"),
        ({"host": "my laptop"}, (), "host"),
        ({"max_audio_seconds": 0}, (), "max_audio_seconds"),
        ({"max_upload_mb": -5}, (), "max_upload_mb"),
        ({"queue_timeout_s": -1}, (), "queue_timeout_s"),
        ({"beam_size": 0}, (), "beam_size"),  # the old top-level spelling is checked like the new one
        ({"decoding": {"beam_size": 17}}, (), "beam_size"),
        ({"decoding": {"beam_size": "4"}}, (), "beam_size"),
        ({"decoding": {"beam_size": True}}, (), "beam_size"),
        ({"decoding": {"beem_size": 2}}, (), "beem_size"),  # a misspelt decoding option
        ({"decoding": [4]}, (), "decoding"),
        ({"decoding": {"no_speech_threshold": 1.5}}, (), "no_speech_threshold"),
        ({"name": ""}, (), "name"),
    ],
)
def test_bad_files_name_the_key_and_the_file(tmp_path, changes, drop, key):
    path = _write(tmp_path, changes, drop)
    with pytest.raises(ResonanceError) as info:
        load_device_config(path)
    message = str(info.value)
    assert key in message
    assert str(path) in message
    assert info.value.hint


def test_a_file_lists_only_what_differs_and_the_rest_is_the_defaults(tmp_path):
    path = tmp_path / "my-box.yaml"
    path.write_text("port: 9000\ndecoding:\n  beam_size: 1\n", encoding="utf-8")
    config = load_device_config(path)
    assert config.name == "my-box"  # no name: the file's
    assert config.port == 9000 and config.decoding == DecodingOptions(beam_size=1)
    defaults = DeviceConfig(name="my-box")
    assert defaults.decoding.beam_size == DecodingOptions().beam_size == 4  # beam search unless a file says
    assert config.replace(port=defaults.port, decoding={"beam_size": 4}) == defaults
    assert config.max_audio_seconds == 30.0 and isinstance(config.max_upload_mb, float)  # typed as declared


def test_an_old_config_with_every_key_still_loads(tmp_path, caplog):
    """A caregiver's copy of an older packaged config: every key listed, beam_size at the top level."""
    import logging

    old = dict(dataclasses.asdict(load_device_config("pc-cuda")), name="old-box", beam_size=3)
    del old["source"], old["decoding"]
    path = tmp_path / "old-box.yaml"
    path.write_text(yaml.safe_dump(old), encoding="utf-8")
    with caplog.at_level(logging.WARNING, logger="resonance.runtime.device_config"):
        config = load_device_config(path)
    assert config.decoding.beam_size == 3
    assert config.replace(name="pc-cuda") == load_device_config("pc-cuda").replace(decoding={"beam_size": 3})
    assert any("decoding" in r.getMessage() for r in caplog.records)  # says where it goes now


def test_not_a_mapping_and_bad_yaml(tmp_path):
    (tmp_path / "list.yaml").write_text("- a\n- b\n", encoding="utf-8")
    (tmp_path / "broken.yaml").write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(ResonanceError, match="mapping"):
        load_device_config(tmp_path / "list.yaml")
    with pytest.raises(ResonanceError, match="not valid YAML"):
        load_device_config(tmp_path / "broken.yaml")


def test_unknown_name_lists_the_packaged_configs():
    with pytest.raises(ResonanceError) as info:
        load_device_config("raspberry-pi")
    assert "pc-cpu" in info.value.hint
    with pytest.raises(ResonanceError, match="not found"):
        load_device_config("missing/file.yaml")
    with pytest.raises(ResonanceError, match="unknown device config"):
        load_device_config("..")  # never a path outside the package by name


def test_overrides_are_validated_like_the_file():
    config = load_device_config("pc-cpu")
    assert config.replace(port=9001).port == 9001
    with pytest.raises(ResonanceError, match="port"):
        config.replace(port=-1)
    with pytest.raises(ResonanceError, match="host"):
        config.replace(host="not an address")
    assert dataclasses.replace(config, port=1) != config  # frozen dataclass semantics hold
    assert config.replace(decoding={"beam_size": 2}).decoding.beam_size == 2  # --beam-size
    with pytest.raises(ResonanceError, match="beam_size"):
        config.replace(decoding={"beam_size": 0})


def test_int8_presets_are_the_same_names_in_export_and_in_every_device_config():
    from resonance.constants import INT8_PRESETS as CONTRACT
    from resonance.cpu import host_int8_preset
    from resonance.export.quantize import INT8_SETTINGS

    assert tuple(INT8_SETTINGS) == CONTRACT

    presets = {name: load_device_config(name).int8_preset for name in list_device_configs()}
    assert presets["jetson-orin-nano"] == presets["jetson-agx-orin"] == "arm64"
    assert presets["pc-cpu"] == presets["pc-cuda"] == host_int8_preset()  # "auto": this machine's CPU


@pytest.mark.parametrize(
    ("machine", "flags", "preset"),
    [
        ("x86_64", ["sse4_2", "avx2", "avx512f", "avx512_vnni"], "avx512"),
        ("x86_64", ["sse4_2", "avx2", "fma"], "avx2"),  # signed int8 weights would saturate AVX2's madd
        ("aarch64", ["fp", "asimd"], "arm64"),  # Jetson, Raspberry Pi
        ("arm64", [], "arm64"),  # Apple silicon
        ("AMD64", [], "avx2"),  # Windows: no /proc/cpuinfo; unsigned weights are right on any x86
    ],
)
def test_the_int8_preset_follows_the_cpu(machine, flags, preset):
    from resonance.cpu import int8_preset_for

    assert int8_preset_for(machine, flags) == preset


def test_a_transcriber_takes_providers_and_threads_from_a_device_config(tmp_path, tiny_bundle, caplog):
    import logging

    from resonance.runtime.transcriber import Transcriber

    changes = {"name": "my-box", "intra_op_threads": 1, "precision": "fp32", "decoding": {"beam_size": 3}}
    custom = _write(tmp_path, changes)
    transcriber = Transcriber.for_device(tiny_bundle, custom)
    assert transcriber.providers == ["CPUExecutionProvider"]
    assert transcriber.encoder.get_session_options().intra_op_num_threads == 1
    assert transcriber.options.beam_size == 3
    assert Transcriber.for_device(tiny_bundle, custom, options={"beam_size": 2}).options.beam_size == 2
    with caplog.at_level(logging.WARNING, logger="resonance.runtime.device_sessions"):
        Transcriber.for_device(tiny_bundle, "pc-cpu")  # an fp32 bundle where int8 is expected: runs, warns
    assert any("expects int8" in r.getMessage() for r in caplog.records)


def test_the_readme_example_config_loads(tmp_path):
    readme = (PACKAGED_CONFIGS.parent / "README.md").read_text(encoding="utf-8")
    blocks = [block.split("```", 1)[0] for block in readme.split("```yaml\n")[1:]]
    (example,) = [block for block in blocks if block.startswith("# my-box.yaml")]
    path = tmp_path / "my-box.yaml"
    path.write_text(example, encoding="utf-8")
    config = load_device_config(path)
    assert (config.name, config.max_concurrent_requests, config.port) == ("my-box", 1, 9000)
    assert config.decoding.beam_size == 1  # greedy: the default is 4 beams
