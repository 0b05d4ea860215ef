"""``python -m vmcraft``: the same as the ``vmcraft`` command."""

from vmcraft.cli import console_main

console_main()
