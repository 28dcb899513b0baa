"""``turnout endpoints add|list|remove``: the ``[[endpoints]]`` tables of the
config file, edited as text so the user's comments and layout survive.

    turnout endpoints add openai --provider openai --model gpt-4.1:1047576:2:8
    turnout endpoints add ollama --provider openai_compatible \\
        --base-url http://127.0.0.1:11434/v1 --model qwen3:32b:40960
    turnout endpoints list
    turnout endpoints remove ollama

``--model NAME[:WINDOW[:INPUT_PRICE:OUTPUT_PRICE]]`` (prices in USD per million
tokens) may repeat. The running turnout reads its config at start: restart it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

from turnout.protocol.config import Config, ConfigError, EndpointConfig, EndpointModel, load_config


def config_path(arg: str | None) -> Path:
    """The file ``turnout up`` would read (created by ``add`` when missing)."""
    if arg:
        return Path(arg)
    env = os.environ.get("TURNOUT_CONFIG")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(xdg) / "turnout" / "config.toml"


def parse_model(spec: str) -> EndpointModel:
    """``NAME[:WINDOW[:IN:OUT]]``; a name may itself hold colons (``qwen3:32b``), so
    trailing numeric fields are taken from the right."""
    parts = spec.split(":")
    nums: list[str] = []
    while len(parts) > 1 and re.fullmatch(r"\d+(\.\d+)?", parts[-1]) and len(nums) < 3:
        nums.insert(0, parts.pop())
    name = ":".join(parts)
    if len(nums) == 2:  # WINDOW:PRICE alone is ambiguous: keep the window
        nums = nums[:1]
    em = EndpointModel(name=name)
    if nums:
        em.context_window = int(float(nums[0]))
    if len(nums) == 3:
        em.input_price, em.output_price = float(nums[1]), float(nums[2])
    return em


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a JSON string is a valid TOML basic string


def endpoint_toml(ep: EndpointConfig) -> str:
    lines = ["", "[[endpoints]]", f"name = {_toml_str(ep.name)}", f"provider = {_toml_str(ep.provider)}"]
    if ep.base_url:
        lines.append(f"base_url = {_toml_str(ep.base_url)}")
    if ep.key is not None:
        lines.append(f"key = {_toml_str(ep.key)}")
    for em in ep.models:
        lines += ["[[endpoints.models]]", f"name = {_toml_str(em.name)}"]
        if em.context_window:
            lines.append(f"context_window = {em.context_window}")
        if em.input_price or em.output_price:
            lines += [f"input_price = {em.input_price}", f"output_price = {em.output_price}"]
    return "\n".join(lines) + "\n"


def remove_endpoint_text(text: str, name: str) -> tuple[str, bool]:
    """``text`` without the ``[[endpoints]]`` table named ``name`` (and its
    ``[[endpoints.models]]`` / ``[endpoints.*]`` sub-tables)."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    i = 0
    removed = False
    header = re.compile(r"^\s*\[")
    while i < len(lines):
        if lines[i].strip() == "[[endpoints]]":
            j = i + 1
            while j < len(lines) and not (header.match(lines[j]) and not lines[j].strip().startswith(("[[endpoints.", "[endpoints."))):
                j += 1
            block = "".join(lines[i:j])
            if re.search(rf"^\s*name\s*=\s*{re.escape(_toml_str(name))}\s*$", block, re.M) or \
                    re.search(rf"^\s*name\s*=\s*'{re.escape(name)}'\s*$", block, re.M):
                removed = True
                while out and not out[-1].strip():
                    out.pop()
                out.append("\n")
                i = j
                continue
            out.extend(lines[i:j])
            i = j
            continue
        out.append(lines[i])
        i += 1
    return "".join(out), removed


def _load(path: Path) -> Config:
    if not path.exists():
        return Config()
    return load_config(path)


def cmd_add(args: argparse.Namespace) -> int:
    from turnout.gateway.providers import PROVIDERS

    path = config_path(args.config)
    if args.provider not in PROVIDERS:
        print(f"turnout: --provider must be one of {', '.join(PROVIDERS)}", file=sys.stderr)
        return 2
    try:
        cfg = _load(path)
    except ConfigError as e:
        print(f"turnout: {e}", file=sys.stderr)
        return 2
    if any(e.name == args.name for e in cfg.endpoints):
        print(f"turnout: an endpoint named {args.name!r} exists; remove it first", file=sys.stderr)
        return 2
    ep = EndpointConfig(name=args.name, provider=args.provider, base_url=args.base_url or "",
                        key=args.key, models=[parse_model(s) for s in args.model or []])
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text() if path.exists() else ""
    new = old.rstrip("\n") + ("\n" if old else "") + endpoint_toml(ep)
    path.write_text(new)
    try:
        load_config(path)
    except ConfigError as e:
        path.write_text(old)
        print(f"turnout: the result would not load, nothing changed: {e}", file=sys.stderr)
        return 2
    kname = ep.key if ep.key is not None else ep.name
    print(f"added endpoint {ep.name!r} ({ep.provider}) to {path}")
    if kname and ep.provider != "openai_compatible":
        print(f"set its key with: turnout keys set {kname}")
    print("restart turnout to use it")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from turnout.gateway.keys import get_key
    from turnout.gateway.providers import DEFAULT_BASE_URLS

    path = config_path(args.config)
    try:
        cfg = _load(path)
    except ConfigError as e:
        print(f"turnout: {e}", file=sys.stderr)
        return 2
    if not cfg.endpoints:
        print(f"no endpoints in {path}; add one with `turnout endpoints add NAME --provider P`")
        return 0
    for ep in cfg.endpoints:
        kname = ep.key if ep.key is not None else ep.name
        if get_key(kname) if kname else False:
            key = "key set"
        elif not kname or ep.provider == "openai_compatible":
            key = "no key (none needed)"
        else:
            key = f"no key: turnout keys set {kname}"

        print(f"{ep.name}\t{ep.provider}\t{ep.base_url or DEFAULT_BASE_URLS.get(ep.provider, '')}\t{key}")
        for em in ep.models:
            price = f"  ${em.input_price}/${em.output_price} per Mtok" if em.input_price or em.output_price else ""
            print(f"  {em.name}\t{em.context_window or '?'} tokens{price}")
    return 0


def cmd_remove(args: argparse.Namespace) -> int:
    path = config_path(args.config)
    if not path.exists():
        print(f"turnout: no config file at {path}", file=sys.stderr)
        return 1
    text, removed = remove_endpoint_text(path.read_text(), args.name)
    if not removed:
        print(f"turnout: no endpoint named {args.name!r} in {path}", file=sys.stderr)
        return 1
    path.write_text(text)
    print(f"removed endpoint {args.name!r} from {path}; restart turnout to apply")
    return 0
