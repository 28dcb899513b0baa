"""``llama_cpp.server`` as a real OpenAI-compatible upstream (a tiny random-weight
GGUF, so the words are noise: the test checks the mechanics), reached through
turnout by the ``anthropic`` SDK."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import anthropic
import pytest

from turnout.supervisor.launch import TurnoutProcess, free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "workers"))
from tiny_gguf import write_tiny_gguf

pytestmark = pytest.mark.slow  # a llama_cpp.server peer


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    model = write_tiny_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf")
    port = free_port()
    log = open(tmp_path_factory.mktemp("llslog") / "server.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "512", "--n_threads", "1", "--logits_all", "false",
                             "--model_alias", "tiny"], stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, "llama_cpp.server exited"
        try:
            with urllib.request.urlopen(base + "/models", timeout=1):
                break
        except OSError:
            time.sleep(0.1)
    else:
        raise TimeoutError("llama_cpp.server did not start")
    yield base
    proc.terminate()
    proc.wait(10)
    log.close()


def test_anthropic_sdk_through_turnout_to_llama_cpp_server(llama_server: str, turnout_factory: object) -> None:
    cfg = f"""
[[endpoints]]
name = "llama"
provider = "openai_compatible"
base_url = "{llama_server}"
key = ""
[[endpoints.models]]
name = "tiny"
context_window = 512

[routing]
default = "llama/tiny"
"""
    t: TurnoutProcess = turnout_factory(cfg)  # type: ignore[operator]
    c = anthropic.Anthropic(base_url=t.base_url, api_key=t.token, max_retries=0)
    with c.messages.stream(model="claude-sonnet-4-6", max_tokens=8,
                           messages=[{"role": "user", "content": "say hello"}]) as s:
        kinds = [ev.type for ev in s]
        final = s.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert final.stop_reason in ("max_tokens", "end_turn")
    assert 1 <= final.usage.output_tokens <= 8
    assert final.content[0].type == "text" and final.content[0].text  # noise, but streamed through
    # The same through the OpenAI-compatible path's non-streaming answer.
    msg = c.messages.create(model="llama/tiny", max_tokens=4, messages=[{"role": "user", "content": "hi"}])
    assert msg.stop_reason in ("max_tokens", "end_turn") and 1 <= msg.usage.output_tokens <= 4
