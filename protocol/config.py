"""turnout's configuration file (TOML), shared by every process.

Example::

    [server]
    host = "127.0.0.1"
    port = 8765

    [[models]]
    name = "fake"
    backend = "fake"
    aliases = ["claude-*"]
    workers = 1
    [models.options]
    token_delay_ms = 5

``options`` is backend-specific and is validated by the backend itself.
"""

from __future__ import annotations

import fnmatch
import os
import re
from pathlib import Path
from typing import Any, Literal, get_args

import msgspec

DEFAULT_PORT = 8765
DEFAULT_MODEL_NAME = "gemma3-270m"

# The vocabularies a config names. A value outside them is a load-time error that
# names the field and the allowed values (:func:`load_config`).
Backend = Literal["fake", "llama_cpp", "mlx_lm", "ocr", "stt", "tts", "upscale", "embed", "browser"]
Provider = Literal["anthropic", "openai", "gemini", "openai_compatible"]
RuleKind = Literal["background", "thinking", "long_context", "images"]
BACKENDS: tuple[str, ...] = get_args(Backend)
PROVIDERS: tuple[str, ...] = get_args(Provider)
RULE_KINDS: tuple[str, ...] = get_args(RuleKind)


class ServerConfig(msgspec.Struct, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_body_mb: float = 32.0
    # How long a request waits for a ready worker (one that is restarting, say)
    # before it is answered 529 with Retry-After.
    worker_wait_s: float = 5.0
    # How long a worker may take to acknowledge a cancel before it is restarted.
    cancel_deadline_s: float = 2.0
    # A worker whose compute loop has not sent a heartbeat for this long is hung.
    heartbeat_timeout_s: float = 10.0
    # Requests queued on a worker beyond what it runs at once; past that, 529.
    max_queue_per_worker: int = 256
    # Which of a model's workers gets a chat request: "cache_aware" (the one holding
    # its session or longest prefix, unless it has more than ``balance_abs`` requests
    # above the least-loaded worker and more than ``balance_rel`` times its load) or
    # "least_loaded".
    worker_routing: Literal["cache_aware", "least_loaded"] = "cache_aware"
    balance_abs: int = 1
    balance_rel: float = 1.5
    # Hardening (issue 14). ``max_tokens_limit``: a larger max_tokens (max_output_tokens)
    # is a 400 naming the field, whatever the model. ``max_response_mb``: a
    # non-streaming answer that grows past this ends with an error and its
    # generation is stopped (a stream is sent as it comes, so it holds nothing); 0: no bound.
    max_tokens_limit: int = 131_072
    max_response_mb: float = 64.0
    # Connections (gateway/http_guard.py): a request's head must arrive within
    # ``header_timeout_s``; a kept-alive connection idle ``idle_timeout_s`` is closed;
    # past ``max_connections`` the longest-idle one is closed to make room. 0 turns a
    # timeout off; max_connections is kept under the fd limit in any case (0: that alone).
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 75.0
    max_connections: int = 2048
    # Bound to loopback, the Host header must be localhost, *.localhost, a loopback
    # address, or match one of ``allowed_hosts`` (globs; "*": no check). A browser's
    # request (one with Origin) is refused unless its origin is in ``cors_origins``
    # ("*": any), which are also the only origins that get CORS headers.
    allowed_hosts: list[str] = msgspec.field(default_factory=list)
    cors_origins: list[str] = msgspec.field(default_factory=list)


class ModelConfig(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    backend: Backend
    aliases: list[str] = msgspec.field(default_factory=list)  # exact names or globs
    workers: int = 1
    path: str = ""
    context_window: int = 0
    options: dict[str, Any] = msgspec.field(default_factory=dict)
    # Supervisor (issue 4). ``priority``: higher is kept longer under memory
    # pressure. ``keep_alive_s``: unload a worker idle this long (None: the
    # ``[supervisor]`` default; 0: never). ``expected_mb``: the model's footprint for
    # admission (0: estimated from the file and the context). ``on_demand``: load a
    # worker when a request names the model and none runs (None: on for models that
    # start with workers >= 1, so an unloaded or evicted model comes back by itself;
    # off for ``workers = 0``, a model kept off until ``turnout load``).
    priority: int = 0
    keep_alive_s: float | None = None
    expected_mb: float = 0.0
    on_demand: bool | None = None

    def loads_on_demand(self) -> bool:
        return self.on_demand if self.on_demand is not None else self.workers > 0


class MediaConfig(msgspec.Struct, forbid_unknown_fields=True):
    """Limits of the media endpoints (``[media]``); past one, the answer is 413 and
    says which limit. The gateway sends them with each job; workers enforce what
    needs decoding (pixels, seconds), the gateway the rest."""

    max_upload_mb: float = 25.0  # one uploaded file (OpenAI's limit for audio)
    max_audio_seconds: float = 3600.0
    max_image_pixels: int = 40_000_000  # per OCR page
    max_pages: int = 50  # multi-page TIFF/GIF sent to OCR
    max_upscale_pixels: int = 4_000_000  # input; at 4x that is 64 MP out
    max_speech_chars: int = 4096  # OpenAI's limit for /v1/audio/speech input
    # Replace images sent to a local chat model that cannot see by their OCR text.
    ocr_images: bool = False


class EndpointModel(msgspec.Struct, forbid_unknown_fields=True):
    """One model an endpoint serves. Prices are USD per million tokens (0: unknown).
    ``thinking``/``vision`` say what the model can do, for the routing rules."""

    name: str
    context_window: int = 0
    input_price: float = 0.0
    output_price: float = 0.0
    thinking: bool = False
    vision: bool = True


class EndpointConfig(msgspec.Struct, forbid_unknown_fields=True):
    """A cloud provider or an OpenAI-compatible server (``[[endpoints]]``).

    ``provider``: anthropic | openai | gemini | openai_compatible. ``base_url``
    defaults to the provider's public API. ``key``: the keyring entry holding its
    API key (``turnout keys set NAME``; defaults to the endpoint's name; "" with
    ``openai_compatible`` sends none). ``betas``: the ``anthropic-beta`` values this
    upstream accepts (Anthropic only; others are filtered out)."""

    name: str
    provider: Provider
    base_url: str = ""
    key: str | None = None
    models: list[EndpointModel] = msgspec.field(default_factory=list)
    timeout_s: float = 600.0
    connect_timeout_s: float = 10.0
    betas: list[str] | None = None


class RoutingRule(msgspec.Struct, forbid_unknown_fields=True):
    """``when``: background | thinking | long_context | images. ``to``: target(s)
    tried in order. ``models``: globs of requested names the rule applies to
    (empty: all)."""

    when: RuleKind
    to: str | list[str]
    models: list[str] = msgspec.field(default_factory=list)


class RoutingConfig(msgspec.Struct, forbid_unknown_fields=True):
    """``[routing]``: ``aliases`` map a requested model name (exact, glob, or one of
    Claude Code's opus/sonnet/haiku families) to a target or an ordered list of
    targets (the later ones are fallbacks); a target is ``endpoint/model``, a model
    one endpoint lists, or a local model. ``default`` serves names nothing else
    matches. ``retries``: attempts per target on 429/5xx/connection errors before
    falling back; ``backoff_s``: the first wait, doubled each time, unless the
    upstream's Retry-After says otherwise (capped at ``max_retry_after_s``)."""

    default: str | list[str] = ""
    aliases: dict[str, str | list[str]] = msgspec.field(default_factory=dict)
    rules: list[RoutingRule] = msgspec.field(default_factory=list)
    fallback: list[str] = msgspec.field(default_factory=list)
    retries: int = 1
    backoff_s: float = 0.25
    max_retry_after_s: float = 10.0


class SupervisorConfig(msgspec.Struct, forbid_unknown_fields=True):
    """``[supervisor]``: memory watermarks, keep-alive, drains, restart backoff.

    Watermarks are in MiB of *available* memory (psutil's ``available``). Below
    ``soft_available_mb`` new loads are refused and idle workers evicted (lowest
    priority, then least recently used, first); below ``hard_available_mb`` the
    lowest-priority busy worker is drained (``hard_drain_s`` at most) and stopped. A
    level is left only once available memory is ``hysteresis_mb`` above its mark, and
    two evictions are at least ``cooldown_s`` apart so the sampler sees the memory
    come back. 0 for a watermark: a default from total memory (soft 10%, hard 5%,
    at least 1024/512 MiB). ``headroom_mb``: kept free on top of the soft watermark
    when admitting a load."""

    soft_available_mb: float = 0.0
    hard_available_mb: float = 0.0
    hysteresis_mb: float = 256.0
    cooldown_s: float = 5.0
    sample_interval_s: float = 1.0
    headroom_mb: float = 0.0
    keep_alive_s: float = 0.0  # 0: never unload an idle worker
    drain_timeout_s: float = 60.0  # scale down / evict / idle: then stopped anyway
    hard_drain_s: float = 3.0
    stop_grace_s: float = 5.0  # SIGTERM -> SIGKILL
    load_timeout_s: float = 120.0  # how long a request waits for a model to load
    ping_interval_s: float = 5.0  # pings to a client while its model loads
    retry_after_s: float = 10.0  # told to a client whose load was refused
    restart_first_s: float = 0.05
    restart_base_s: float = 0.5
    restart_max_s: float = 30.0
    healthy_after_s: float = 30.0
    crash_loop_restarts: int = 8  # crashes in a row that park a worker as failed


class McpConfig(msgspec.Struct, forbid_unknown_fields=True):
    """``[mcp]`` (issue 6): the MCP server at ``/mcp`` and ``turnout mcp``.
    ``auto_apply_recommendation``: ``endpoint_recommend`` also switches the session
    to its first choice (and says so in its answer). ``recommend_output_tokens`` /
    ``usd_per_second``: the answer size assumed for the next turn, and what a
    second of waiting is worth against a price (gateway/recommend.py)."""

    enabled: bool = True
    auto_apply_recommendation: bool = False
    # Where ocr_image, transcribe_audio, speak_text and upscale_image may read and
    # write files (empty: the home directory and the system temp directory); hidden
    # files and directories below them are refused (gateway/media/tools.py).
    media_dirs: list[str] = msgspec.field(default_factory=list)
    recommend_output_tokens: int = 800
    usd_per_second: float = 0.01


class BrowserConfig(msgspec.Struct, forbid_unknown_fields=True):
    """``[browser]`` (issue 18): the MCP browser tools, driving a headless Chromium in
    the ``browser`` worker (loaded on the first browser tool call).

    ``executable``: the Chromium or Chrome to run ("": the first of chromium,
    chromium-browser, google-chrome, google-chrome-stable, chrome found on PATH, else
    the macOS app).
    ``allow``: globs of the URLs a page may load as a document (the tab, a frame, a
    popup), however it gets there (typed, a link, a redirect, a script); matched part
    by part, ``scheme://host[:port][/path]`` (no scheme: http and https; no port: the
    default one; no path: any): ``https://*.example.com``, ``127.0.0.1:*``; [] allows
    every http(s) URL. ``evaluate``: offer
    ``browser_evaluate`` (a page's JavaScript run as the caller says). ``action_timeout_s``:
    the bound on every action (a navigation and its load, a click and what it starts);
    past it the tool answers an error. ``max_sessions``: browser contexts kept at
    once (one per MCP session); past it the least recently used one is closed.
    ``keep_alive_s``: the browser worker (and Chromium, its pages with it) stops after
    this long without a browser call (0: never); the next call starts it again."""

    enabled: bool = True
    executable: str = ""
    allow: list[str] = msgspec.field(default_factory=list)
    evaluate: bool = False
    action_timeout_s: float = 30.0
    max_sessions: int = 16
    keep_alive_s: float = 900.0


class MetricsConfig(msgspec.Struct, forbid_unknown_fields=True):
    """``[metrics]`` (issue 17): ``GET /metrics`` in Prometheus's text format, with the
    token like every route. ``enabled = false``: no /metrics and nothing recorded.
    ``port``: also serve /metrics (and nothing else) without the token on
    127.0.0.1:``port``, for a local Prometheus (0: no such listener)."""

    enabled: bool = True
    port: int = 0


class Config(msgspec.Struct, forbid_unknown_fields=True):
    server: ServerConfig = msgspec.field(default_factory=ServerConfig)
    models: list[ModelConfig] = msgspec.field(default_factory=list)
    media: MediaConfig = msgspec.field(default_factory=MediaConfig)
    endpoints: list[EndpointConfig] = msgspec.field(default_factory=list)
    routing: RoutingConfig = msgspec.field(default_factory=RoutingConfig)
    supervisor: SupervisorConfig = msgspec.field(default_factory=SupervisorConfig)
    mcp: McpConfig = msgspec.field(default_factory=McpConfig)
    browser: BrowserConfig = msgspec.field(default_factory=BrowserConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)

    def resolve_model(self, name: str) -> ModelConfig | None:
        """The model a request's ``model`` string names: exact name first, then
        exact alias, then the first glob alias that matches."""
        for m in self.models:
            if m.name == name:
                return m
        for m in self.models:
            if name in m.aliases:
                return m
        for m in self.models:
            for a in m.aliases:
                if any(c in a for c in "*?[") and fnmatch.fnmatchcase(name, a):
                    return m
        return None


class ConfigError(Exception):
    pass


# Backends that do not chat: never a chat target, a Claude Code model, a routing choice.
NON_CHAT_BACKENDS = ("ocr", "stt", "tts", "upscale", "embed", "browser")
# The browser worker's model: added to every config that declares none (and keeps
# ``[browser] enabled``), loaded on the first browser tool call, never listed as a model.
BROWSER_MODEL = "browser"
DEFAULT_EMBED_MODEL = "all-minilm-l6-v2"
# The media extra's bundled models (docs/media.md), by backend: the name, and aliases
# for OpenAI's model names (other names of that backend's routes reach them anyway).
DEFAULT_MEDIA_MODELS: dict[Backend, tuple[str, list[str]]] = {
    "embed": (DEFAULT_EMBED_MODEL, ["text-embedding-*"]),
    "ocr": ("rapidocr", []),
    "stt": ("whisper-tiny.en", ["whisper-1"]),
    "tts": ("joe", ["tts-1", "tts-1-hd"]),
    "upscale": ("realesrgan", []),
}


def default_config() -> Config:
    """No config file: the bundled default model answers every Claude model id; the
    bundled embedding, OCR, speech-to-text, text-to-speech and upscale models (the
    media extra) answer their routes, each loaded on its first request."""
    return with_browser(Config(
        models=[
            ModelConfig(
                name=DEFAULT_MODEL_NAME,
                backend="llama_cpp",
                aliases=["claude-*", "default"],
            ),
            *(ModelConfig(name=name, backend=backend, aliases=list(aliases), workers=0, on_demand=True)
              for backend, (name, aliases) in DEFAULT_MEDIA_MODELS.items()),
        ]
    ))


def with_browser(cfg: Config) -> Config:
    """``cfg`` with the browser worker's model (:data:`BROWSER_MODEL`, no worker until
    a browser tool asks for one) unless it declares a ``browser`` model already, has
    one by that name, or turns the browser tools off."""
    if not cfg.browser.enabled or any(mc.backend == "browser" or mc.name == BROWSER_MODEL for mc in cfg.models):
        return cfg
    cfg.models.append(ModelConfig(name=BROWSER_MODEL, backend="browser", workers=0, on_demand=True,
                                  # measured: worker ~25 MiB + headless Chromium with a page ~465 MiB (PSS)
                                  expected_mb=500.0, keep_alive_s=cfg.browser.keep_alive_s))
    return cfg


def config_path(arg: str | None = None) -> str | None:
    """The config file to use: ``arg`` (``--config``), else ``$TURNOUT_CONFIG``, else
    ``$XDG_CONFIG_HOME/turnout/config.toml`` (``~/.config/...``) if it exists; None
    (the built-in defaults) when there is none."""
    if arg:
        return arg
    env = os.environ.get("TURNOUT_CONFIG")
    if env:
        return env
    xdg = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    p = Path(xdg) / "turnout" / "config.toml"
    return str(p) if p.exists() else None


def gateway_url(port: int | None = None, config: str | None = None) -> str:
    """The running gateway's base URL: ``$TURNOUT_URL``, else the config's host and
    port (``port`` overrides the latter); a wildcard bind is reached on loopback."""
    env = os.environ.get("TURNOUT_URL")
    if env:
        return env.rstrip("/")
    cfg = load_config(config_path(config))
    host = cfg.server.host if cfg.server.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
    return f"http://{host}:{port or cfg.server.port}"


# Fields whose values come from a fixed vocabulary, for the error that names them.
_ALLOWED: dict[str, tuple[str, ...]] = {
    "backend": BACKENDS, "provider": PROVIDERS, "when": RULE_KINDS, "worker_routing": ("cache_aware", "least_loaded"),
}
_ENUM_ERROR = re.compile(r"Invalid enum value (?P<value>.*) - at `\$(?P<path>[^`]*)`")


def _field_path(raw: Any, path: str) -> str:
    """``$.endpoints[0].provider`` as a person reads it: ``endpoints.x.provider``
    (an entry of a list named by its ``name``, when it has one)."""
    out: list[str] = []
    node = raw
    for key, index in re.findall(r"\.([A-Za-z_][\w-]*)|\[(\d+)\]", path):
        if key:
            out.append(key)
            node = node.get(key) if isinstance(node, dict) else None
        else:
            node = node[int(index)] if isinstance(node, list) and int(index) < len(node) else None
            name = node.get("name") if isinstance(node, dict) else None
            out.append(name if isinstance(name, str) and name else index)
    return ".".join(out)


def _validation_message(raw: bytes, e: msgspec.ValidationError) -> str:
    text = str(e)
    hit = _ENUM_ERROR.fullmatch(text)
    if hit is None:
        return text
    try:
        tree = msgspec.toml.decode(raw)
    except msgspec.DecodeError:
        tree = None
    where = _field_path(tree, hit["path"])
    allowed = _ALLOWED.get(where.rsplit(".", 1)[-1])
    if allowed is None:
        return text
    return f"{where}: {hit['value']} is not one of {', '.join(allowed)}"


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """The config in the TOML file ``path`` (None: :func:`default_config`), checked:
    a :class:`ConfigError` names the first field that is wrong and why."""
    if path is None:
        return default_config()
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise ConfigError(f"cannot read config {p}: {e.strerror}") from None
    try:
        cfg = msgspec.toml.decode(raw, type=Config)
    except msgspec.ValidationError as e:
        raise ConfigError(f"{p}: {_validation_message(raw, e)}") from None
    except msgspec.DecodeError as e:
        raise ConfigError(f"{p}: not valid TOML: {e}") from None
    names = [m.name for m in cfg.models]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError(f"{p}: model names must be unique, repeated: {sorted(dupes)}")
    for m in cfg.models:
        if m.workers < 0:
            raise ConfigError(f"{p}: models.{m.name}.workers must be >= 0")
    problem = (server_problem(cfg.server) or browser_problem(cfg.browser)
               or metrics_problem(cfg.metrics, cfg.server.port))
    if problem:
        raise ConfigError(f"{p}: {problem}")
    problems = validate(cfg)
    if problems:
        raise ConfigError(f"{p}: " + "; ".join(problems))
    return with_browser(cfg)


def validate(cfg: Config) -> list[str]:
    """Problems in ``[[endpoints]]`` / ``[routing]`` a user must fix (what the types
    alone cannot say)."""
    problems = []
    names = [e.name for e in cfg.endpoints]
    for n in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"endpoints: the name {n!r} is used twice")
    for e in cfg.endpoints:
        if e.provider not in PROVIDERS:
            problems.append(f"endpoints.{e.name}.provider: {e.provider!r} is not one of {', '.join(PROVIDERS)}")
        if "/" in e.name:
            problems.append(f"endpoints.{e.name}: a name cannot contain '/'")
    for r in cfg.routing.rules:
        if r.when not in RULE_KINDS:
            problems.append(f"routing.rules: when = {r.when!r} is not one of {', '.join(RULE_KINDS)}")
    return problems


def server_problem(s: ServerConfig) -> str:
    """What is wrong with ``[server]``'s limits ("" when nothing)."""
    if not 0 <= s.max_tokens_limit < 2**63:
        return "server.max_tokens_limit must be between 0 (no cap) and 2^63-1"
    if s.max_response_mb < 0:
        return "server.max_response_mb must be >= 0 (0: no bound)"
    if s.header_timeout_s < 0 or s.idle_timeout_s < 0 or s.max_connections < 0:
        return "server.header_timeout_s, idle_timeout_s and max_connections must be >= 0 (0: off)"
    return ""


def browser_problem(b: BrowserConfig) -> str:
    """What is wrong with ``[browser]`` ("" when nothing)."""
    if not 0 < b.action_timeout_s <= 3600:
        return "browser.action_timeout_s must be between 0 and 3600 seconds"
    if b.max_sessions < 1:
        return "browser.max_sessions must be >= 1"
    if b.keep_alive_s < 0:
        return "browser.keep_alive_s must be >= 0 (0: never stop)"
    return ""


def metrics_problem(mc: MetricsConfig, server_port: int) -> str:
    """What is wrong with ``[metrics]`` ("" when nothing)."""
    if not 0 <= mc.port <= 65535:
        return "metrics.port must be between 0 (no listener) and 65535"
    if mc.port and mc.port == server_port:
        return f"metrics.port must differ from server.port ({server_port})"
    return ""


def encode_config(cfg: Config) -> bytes:
    return msgspec.json.encode(cfg)


def decode_config(data: bytes | str) -> Config:
    return msgspec.json.decode(data, type=Config)
