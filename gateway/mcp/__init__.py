"""turnout's MCP server (this package): Claude Code (or any MCP client) inspects and switches its
own backend by asking.

Transports:
    POST/GET/DELETE /mcp   Streamable HTTP on the gateway, behind the gateway's token
                           (the auth middleware in gateway/app.py covers it).
    turnout mcp            stdio, for clients that spawn servers: a thin proxy that
                           forwards every call to the running gateway's ``/mcp``
                           with the token (the same tools, one implementation).

Tools (each does real work in the gateway process):
    endpoint_list, endpoint_status, endpoint_set, endpoint_recommend, models_list,
    model_load, model_unload, workers_status, workers_scale, system_status,
    keys_status, usage; and the media tools of gateway/media/ (ocr_image,
    transcribe_audio, speak_text, upscale_image).

Which session a call is about: Claude Code sends every MCP tool call with
``_meta["claudecode/toolUseId"]``, the id of the ``tool_use`` block the model
produced. The gateway streamed that block itself, for a request carrying the
session id (``X-Claude-Code-Session-Id``), so ``gateway.telemetry.observe`` remembers
``tool_use id -> session`` for tools named ``mcp__*`` and the tool looks it up:
exact, even with several Claude Code sessions open. Fallbacks, in order: an
explicit ``session_id`` argument, an ``X-Claude-Code-Session-Id`` header on the MCP
request (``turnout mcp`` forwards ``$CLAUDE_CODE_SESSION_ID``), the most recently
active session (the answer says so).

The router's telemetry (gateway/telemetry.py, kept whether MCP is on or off) holds
the usage ledger (tokens and cost per endpoint and per session) and local models'
TTFT and tokens/s, so ``endpoint_recommend`` compares local and cloud on measured
figures.

Modules: ``targets`` (the names ``endpoint_set`` understands), ``switching`` (which
session a call is about; switching and recommending), ``server`` (the tools),
``http`` (``/mcp`` on the gateway), ``stdio`` (``turnout mcp``).
"""
