"""``python -m supervisor.cli``: the ``turnout`` command under its old name.

The command line lives in the ``cli`` package; this name stays because running
supervisors are recognised by it (``python -m supervisor.cli up``), daemon mode and
the tests spawn it, and Claude Code configs written by ``turnout claude setup``
start ``python -m supervisor.cli mcp``.
"""

from __future__ import annotations

import sys

from cli.common import config_path as _config_path
from cli.main import main

__all__ = ["_config_path", "main"]

if __name__ == "__main__":
    sys.exit(main())
