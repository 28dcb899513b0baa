"""Named exit codes of turnout's processes: the supervisor reads them to decide
what to do next (STYLE: terminal states are explicit)."""

from __future__ import annotations

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_MODEL_LOAD_ERROR = 3  # a worker whose model cannot load: do not restart it in a loop
EXIT_PROTOCOL_ERROR = 4
EXIT_BIND_ERROR = 5  # the gateway could not bind its port
