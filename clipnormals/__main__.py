"""``python -m clipnormals``: the same as the ``clipnormals`` command."""

from ._cli.app import main

main()
