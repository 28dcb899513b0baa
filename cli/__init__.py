"""The ``turnout`` command line: one module per command group.

Each module's ``register(sub)`` adds its subcommands with the standard library
alone; the code a command runs is imported only when that command runs
(:class:`cli.common.Lazy`), so ``turnout --help`` and ``turnout ps`` start fast and a
command whose implementation cannot be imported says so and exits non-zero.
"""
