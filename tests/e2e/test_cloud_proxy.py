"""An HTTP(S)_PROXY in turnout's environment carries its upstream requests (with
the proxy's own credentials), and NO_PROXY exempts hosts: what users behind a
corporate proxy need. The proxy here is a real forward proxy in a thread."""

from __future__ import annotations

import asyncio
import base64
import threading

import anthropic
import pytest

from tests.upstreams.fake import FakeUpstreams
from turnout.gateway.providers.base import env_proxy
from turnout.supervisor.launch import TurnoutProcess

CONFIG = """
[[endpoints]]
name = "oai"
provider = "openai"
base_url = "{url}/openai/v1"
[[endpoints.models]]
name = "gpt-test"
"""


class ForwardProxy:
    """Plain-HTTP forward proxy: records each connection's first request line and
    Proxy-Authorization, then pipes bytes both ways to the origin."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str]] = []
        self.port = 0

    async def _pipe(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            while data := await r.read(65536):
                w.write(data)
                await w.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        head = await cr.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
        headers = [h for h in lines[1:] if h]
        auth = next((h.split(":", 1)[1].strip() for h in headers if h.lower().startswith("proxy-authorization:")), "")
        self.seen.append((lines[0], auth))
        hostport, _, path = target.removeprefix("http://").partition("/")
        host, _, port = hostport.partition(":")
        ur, uw = await asyncio.open_connection(host, int(port or 80))
        kept = [h for h in headers if not h.lower().startswith("proxy-")]
        uw.write(f"{method} /{path} {version}\r\n".encode() + "".join(h + "\r\n" for h in kept).encode() + b"\r\n")
        await asyncio.gather(self._pipe(cr, uw), self._pipe(ur, cw))

    def start(self) -> ForwardProxy:
        ready = threading.Event()

        def run() -> None:
            self.loop = asyncio.new_event_loop()
            server = self.loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()

        threading.Thread(target=run, daemon=True).start()
        ready.wait(10)
        return self


def _ask(t: TurnoutProcess) -> str:
    c = anthropic.Anthropic(base_url=t.base_url, api_key=t.token, max_retries=0)
    msg = c.messages.create(model="oai/gpt-test", max_tokens=50, messages=[{"role": "user", "content": "via proxy"}])
    return "".join(b.text for b in msg.content if b.type == "text")


@pytest.mark.parametrize("no_proxy", ["", "127.0.0.1"])
def test_upstream_requests_go_through_the_environment_proxy(upstreams: FakeUpstreams, tmp_path, no_proxy: str) -> None:
    proxy = ForwardProxy().start()
    # lower case wins over upper case (urllib's rule, and curl's)
    env = {"http_proxy": f"http://puser:p%40ss@127.0.0.1:{proxy.port}", "no_proxy": no_proxy,
           "TURNOUT_KEY_OAI": upstreams.keys["openai"]}
    t = TurnoutProcess(CONFIG.format(url=upstreams.url), env=env, workdir=str(tmp_path)).start()
    try:
        assert _ask(t) == "openai heard: via proxy"
    finally:
        t.stop()
    if no_proxy:
        assert proxy.seen == []
    else:
        line, auth = proxy.seen[0]
        assert line == f"POST {upstreams.url}/openai/v1/chat/completions HTTP/1.1"
        assert auth == "Basic " + base64.b64encode(b"puser:p@ss").decode()


def test_env_proxy_picks_scheme_all_and_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for k in ("http_proxy", "https_proxy", "all_proxy", "no_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(k, raising=False)
    env_proxy.cache_clear()
    monkeypatch.setenv("HTTPS_PROXY", "http://corp:3128")
    monkeypatch.setenv("ALL_PROXY", "http://all:8080")
    monkeypatch.setenv("NO_PROXY", "internal.example,.lan")
    try:
        assert str(env_proxy("https://api.anthropic.com/v1/messages")[0]) == "http://corp:3128"
        assert str(env_proxy("http://vllm.example:8000/v1/chat/completions")[0]) == "http://all:8080"
        assert env_proxy("http://internal.example/v1")[0] is None
        assert env_proxy("http://box.lan:11434/v1")[0] is None
        assert env_proxy("https://api.openai.com/v1")[1] is None  # no credentials in the proxy URL
    finally:
        env_proxy.cache_clear()
