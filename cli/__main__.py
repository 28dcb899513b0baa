"""``python -m turnout.cli``: the same as the ``turnout`` command."""

import sys

from turnout.cli.main import main

sys.exit(main())
