"""Traditional -> Simplified with OpenCC, or its pure-Python port where OpenCC has no wheel (JetPack 5)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from resonance.text import normalize_for_cer, to_simplified

SENTENCES = ["我想喝水，請幫我開燈", "後來他們乾脆把頭髮剪了", "臺灣的電腦軟體", "我想喝水"]

BLOCK_OPENCC = """
import json, sys
class Blocker:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in sys.argv[1].split(","):
            raise ImportError(name + " is not installed here")
sys.meta_path.insert(0, Blocker())
from resonance import text
try:
    print(json.dumps({"out": [text.to_simplified(s) for s in json.loads(sys.argv[2])]}))
except Exception as exc:
    print(json.dumps({"error": type(exc).__name__, "message": str(exc)}))
"""


def _without(blocked: str) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", BLOCK_OPENCC, blocked, json.dumps(SENTENCES, ensure_ascii=False)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_opencc_converts():
    assert [to_simplified(s) for s in SENTENCES] == [
        "我想喝水，请帮我开灯",
        "后来他们干脆把头发剪了",
        "台湾的电脑软体",
        "我想喝水",
    ]
    assert normalize_for_cer("開燈！") == "开灯"
    assert normalize_for_cer("我想\u200b喝水\ufeff") == "我想喝水"  # invisible characters are not said


def test_the_pure_python_port_gives_the_same_text_where_opencc_has_no_wheel():
    pytest.importorskip("opencc_purepy", reason="opencc-purepy comes with the [dev] extra")
    assert _without("opencc") == {"out": [to_simplified(s) for s in SENTENCES]}


def test_neither_installed_is_an_error_that_says_what_to_install():
    result = _without("opencc,opencc_purepy")
    assert result["error"] == "DependencyMissing"
    assert "pip install opencc" in result["message"]
