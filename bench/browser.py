"""The MCP browser tools' latencies (issue 18), through /mcp with the official MCP
SDK against a real turnout (fake model) and a page served on 127.0.0.1:

* cold: the first ``browser_navigate`` of a fresh turnout (the browser worker is
  spawned, Chromium started, the page loaded), one per round;
* warm: ``browser_navigate``, ``browser_snapshot``, ``browser_click`` (a button whose
  handler adds a list item), ``browser_type``, p50 / p95 over ``--actions`` calls each;
* after Chromium is SIGKILLed: the first call (a clean error when it was mid-action;
  here it was idle, so the call starts Chromium again and succeeds);
* memory (PSS) of the browser worker and of its Chromium processes after the warm calls.

    flock /tmp/turnout-heavy.lock .venv/bin/python -m turnout.bench.browser --rounds 3 --actions 20

Writes ``bench/results/browser.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import re
import statistics
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psutil

from turnout.supervisor.launch import TurnoutProcess

ROOT = Path(__file__).resolve().parents[1]
FAKE = '[[models]]\nname = "fake"\nbackend = "fake"\n'
PAGE = b"""<!doctype html><title>Bench</title><h1>Bench</h1>
<label>Name <input name=name></label>
<ul id=items><li>item 1</li></ul>
<button onclick="var li=document.createElement('li');li.textContent='item';
document.getElementById('items').appendChild(li)">Add item</button>"""


def _serve() -> ThreadingHTTPServer:
    class H(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("content-type", "text/html")
            self.send_header("content-length", str(len(PAGE)))
            self.end_headers()
            self.wfile.write(PAGE)

        def log_message(self, *a: Any) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


async def _client(t: TurnoutProcess, steps: Any) -> Any:
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client
    from mcp.shared._httpx_utils import create_mcp_http_client

    headers = {"Authorization": f"Bearer {t.token}", "X-Claude-Code-Session-Id": "bench"}
    async with create_mcp_http_client(headers=headers) as hc:
        async with Client(streamable_http_client(t.base_url + "/mcp", http_client=hc)) as c:
            return await steps(c)


async def _timed(c: Any, name: str, args: dict[str, Any]) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = await c.call_tool(name, args)
    dt = time.perf_counter() - t0
    if r.is_error:
        raise SystemExit(f"{name} failed: {r.content[0].text}")
    return dt, str(r.content[0].text)


def _ref(snap: str, pattern: str) -> str:
    for line in snap.splitlines():
        if re.search(pattern, line):
            hit = re.search(r"\[ref=(e\d+)\]", line)
            if hit:
                return hit.group(1)
    raise SystemExit(f"no {pattern!r} in the snapshot")


def _browser_pss(t: TurnoutProcess) -> tuple[float, float]:
    for w in t.admin_workers():
        if w["backend"] == "browser" and w["pid"]:
            p = psutil.Process(int(str(w["pid"])))
            kids = p.children(recursive=True)
            # PSS: Chromium's processes share most of their pages (the binary, fonts);
            # summing their RSS would count those once per process.
            return (p.memory_full_info().pss / 2**20,
                    sum(k.memory_full_info().pss for k in kids) / 2**20)
    return 0.0, 0.0


def _pctl(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def run_round(url: str, actions: int, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    t = TurnoutProcess(FAKE, workdir=str(workdir))
    t.start()
    try:
        async def steps(c: Any) -> dict[str, Any]:
            out: dict[str, Any] = {}
            out["cold_navigate_s"], snap = await _timed(c, "browser_navigate", {"url": url})
            warm: dict[str, list[float]] = {"navigate": [], "snapshot": [], "click": [], "type": []}
            for i in range(actions):
                dt, snap = await _timed(c, "browser_navigate", {"url": url})
                warm["navigate"].append(dt)
                warm["snapshot"].append((await _timed(c, "browser_snapshot", {}))[0])
                warm["click"].append((await _timed(c, "browser_click", {"ref": _ref(snap, "Add item")}))[0])
                warm["type"].append((await _timed(c, "browser_type", {"ref": _ref(snap, "textbox"),
                                                                       "text": f"name {i}"}))[0])
            out["warm"] = {k: {"p50_ms": round(statistics.median(v) * 1000, 1),
                               "p95_ms": round(_pctl(v, 0.95) * 1000, 1)} for k, v in warm.items()}
            out["worker_pss_mb"], out["chromium_pss_mb"] = _browser_pss(t)
            for w in t.admin_workers():
                if w["backend"] == "browser":
                    for p in psutil.Process(int(str(w["pid"]))).children():
                        p.kill()
            out["after_kill_navigate_s"] = (await _timed(c, "browser_navigate", {"url": url}))[0]
            return out
        return dict(asyncio.run(_client(t, steps)))
    finally:
        t.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--actions", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "bench/results/browser"))
    a = ap.parse_args()
    srv = _serve()
    url = f"http://127.0.0.1:{srv.server_address[1]}/"
    import tempfile

    rounds = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(a.rounds):
            rounds.append(run_round(url, a.actions, Path(tmp) / f"r{i}"))
            print(json.dumps(rounds[-1]))
    srv.shutdown()
    result = {"date": time.strftime("%Y-%m-%d"), "host": platform.node(), "cpus": psutil.cpu_count(),
              "rounds": rounds}
    Path(a.out + ".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = ["# Browser tools through /mcp", "",
             f"{result['date']}, {result['cpus']} CPUs; {a.rounds} fresh turnouts, {a.actions} warm calls of each "
             "action per round (`python -m turnout.bench.browser`).", "",
             "| round | cold first navigate (s) | navigate p50/p95 (ms) | snapshot | click | type | after Chromium "
             "SIGKILL: navigate (s) | worker / Chromium PSS (MiB) |", "|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(rounds):
        w = r["warm"]
        cells = [f"{w[k]['p50_ms']} / {w[k]['p95_ms']}" for k in ("navigate", "snapshot", "click", "type")]
        lines.append(f"| {i + 1} | {r['cold_navigate_s']:.2f} | " + " | ".join(cells)
                     + f" | {r['after_kill_navigate_s']:.2f} | {r['worker_pss_mb']:.0f} / {r['chromium_pss_mb']:.0f} |")
    Path(a.out + ".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
