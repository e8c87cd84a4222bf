"""Opening a microphone with sounddevice, with errors that say what to plug in or install."""

from __future__ import annotations

from typing import Any, Optional, Tuple, Union

from resonance.errors import ResonanceError, require


def open_input_device(device: Optional[Union[int, str]], purpose: str) -> Tuple[Any, int]:
    """Return (the sounddevice module, the device's native sample rate) for an input device.

    Not every card records at 16 kHz: callers capture at the native rate and resample.
    """
    try:
        sd = require("sounddevice", "mic", purpose)
    except OSError as exc:  # the module is there but the PortAudio C library is not
        raise ResonanceError(
            f"{purpose} needs the PortAudio library, which was not found: no microphone can be used",
            "on Debian/Ubuntu/Jetson: sudo apt install libportaudio2; elsewhere: pip install --force-reinstall "
            "sounddevice",
        ) from exc
    try:
        info = sd.query_devices(device, kind="input")
    except (ValueError, sd.PortAudioError) as exc:
        raise ResonanceError(
            f"no microphone found{f' for --device {device}' if device is not None else ''} ({exc})",
            "plug in a microphone; list the devices with `python -m sounddevice` and pick one with --device N",
        ) from exc
    if int(info.get("max_input_channels", 0)) < 1:
        raise ResonanceError(
            f"device '{info.get('name')}' is not a microphone (it has no input channels)",
            "list the devices with `python -m sounddevice` and pick an input with --device N",
        )
    return sd, int(info["default_samplerate"])
