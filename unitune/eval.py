"""`python -m unitune.eval <benchmark> ...`: the evaluation command (see unitune.evaluation)."""

from __future__ import annotations

from unitune.errors import run_cli


def run(argv: list[str] | None = None):
    """Entry point for `unitune eval ...`: one benchmark run or `compare`."""
    from unitune.evaluation import run as evaluation_run

    return evaluation_run(argv)


if __name__ == "__main__":
    run_cli(run)
