"""``python -m stratad``: the same as the ``stratad`` command."""

from stratad._entry import main

main()
