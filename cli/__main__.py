"""``python -m cli``: the same as the ``turnout`` command."""

import sys

from cli.main import main

sys.exit(main())
