"""The batch runner: a folder of portraits in, a folder of normal maps out, one credit per image.

Owns finding the sources (``discover``), deciding what each needs (``plan``), the JSONL manifest
(``manifest``), writing outputs (``outputs``), the run itself (``runner``), the dry run
(``dryrun``) and the run's value objects (``types``). Users import these names from
:mod:`clipnormals.batch`.

May import: the client core (``clipnormals._core``), ``clipnormals._images``,
``clipnormals._normals``, ``clipnormals._errors`` and ``clipnormals._atomic``. Never the CLI:
the runner reports through a reporter protocol, and the CLI renders those events.
"""
