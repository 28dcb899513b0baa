"""Benchmark results as JSON, a Markdown table and PNG plots."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any


def _get(d: dict[str, Any], *path: str) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return None
        d = d[p]
    return d


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def cell(res: dict[str, Any], workload: str, *path: str, digits: int = 2) -> str:
    w = res.get(workload)
    if w is None:
        return "—"
    if "skipped" in w:
        return f"skipped: {w['skipped']}"
    return _fmt(_get(w, *path), digits)


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        "# turnout bench",
        "",
        f"Command: `{doc['command']}`  ",
        f"Date: {doc['date']} · machine: {doc['machine']}",
        "",
        "| target | 2K TTFT p50 (s) | 2K TTFT p95 (s) | 20K+tools decode tok/s p50 | 20K first-turn TTFT p50 (s) | 2nd turn TTFT / 1st (p50) | 50K TTFT p95 (s) | extra TTFT after cancel p50 (s) | tok/s at 1 / 4 / 16 streams |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in doc["targets"]:
        r = doc["results"][t["name"]]
        conc = r.get("concurrency") or {}
        tps = " / ".join(_fmt(_get(conc, lvl, "tokens_per_s", "p50"), 1) for lvl in ("1", "4", "16")) if conc else "—"
        lines.append(
            f"| {t['name']} ({t['kind']}) | {cell(r, 'single_2k', 'ttft_s', 'p50')} | {cell(r, 'single_2k', 'ttft_s', 'p95')} "
            f"| {cell(r, 'multi_20k_tools', 'decode_tps', 'p50', digits=1)} | {cell(r, 'multi_20k_tools', 'ttft_s', 'p50')} "
            f"| {cell(r, 'multi_20k_tools', 'second_turn_ttft_fraction', 'p50', digits=3)} "
            f"| {cell(r, 'tool_heavy_50k', 'ttft_s', 'p95')} | {cell(r, 'cancel', 'extra_ttft_after_cancel_s', 'p50', digits=3)} | {tps} |"
        )
    lines += ["", f"Runs per workload: {doc['runs']}. Windows: " +
              ", ".join(f"{t['name']} {t['context_window'] or '?'}" for t in doc["targets"]) + "."]
    return "\n".join(lines) + "\n"


def plots(doc: dict[str, Any], out_dir: Path) -> list[Path]:
    """Bar charts of TTFT and decode speed, and tokens/s against concurrency (none
    without matplotlib, which only turnout's dev extra installs; it says so)."""
    try:
        import matplotlib
    except ImportError:
        print("turnout bench: no plots: matplotlib is not installed (pip install matplotlib, "
              "or turnout's dev extra)", file=sys.stderr)
        return []

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [t["name"] for t in doc["targets"]]
    res = doc["results"]
    made: list[Path] = []

    def bars(values: list[float | None], title: str, ylabel: str, fname: str) -> None:
        fig, ax = plt.subplots(figsize=(7, 3.6))
        xs = [i for i, v in enumerate(values) if v is not None]
        ax.bar([names[i] for i in xs], [float(values[i] or 0) for i in xs], color="#4a7bb7")
        ax.set_title(title)
        ax.set_ylabel(ylabel)
        ax.tick_params(axis="x", labelrotation=15)
        fig.tight_layout()
        p = out_dir / fname
        fig.savefig(p, dpi=110)
        plt.close(fig)
        made.append(p)

    bars([_get(res[n], "single_2k", "ttft_s", "p50") for n in names], "2K-token prompt: TTFT p50", "seconds", "ttft_2k.png")
    bars([_get(res[n], "multi_20k_tools", "decode_tps", "p50") for n in names], "20K conversation with tools: decode p50",
         "tokens/s", "decode_20k.png")
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for n in names:
        conc = res[n].get("concurrency") or {}
        lv = sorted(int(k) for k in conc)
        if lv:
            ax.plot(lv, [_get(conc, str(k), "tokens_per_s", "p50") for k in lv], marker="o", label=n)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent streams")
    ax.set_ylabel("tokens/s (all streams)")
    ax.set_title("Throughput under concurrency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    p = out_dir / "concurrency.png"
    fig.savefig(p, dpi=110)
    plt.close(fig)
    made.append(p)
    return made


def write(doc: dict[str, Any], out_dir: Path, with_plots: bool = True) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "bench.json").write_text(json.dumps(doc, indent=2) + "\n")
    (out_dir / "bench.md").write_text(markdown(doc))
    files = [out_dir / "bench.json", out_dir / "bench.md"]
    if with_plots:
        files += plots(doc, out_dir)
    return files
