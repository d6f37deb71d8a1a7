"""``python -m kdcore``: the same command line as the ``kdcore`` console script."""

from kdcore.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
