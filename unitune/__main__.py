"""python -m unitune <command> ...: the same as the `unitune` command."""

from unitune.cli import main

main()
