"""``python -m mtl_search`` is the same as the ``mtl-search`` console script."""

from mtl_search.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
