"""The batch runner: a folder of portraits in, a folder of normal maps out, one credit per image.

Owns finding the sources (``discover``), deciding what each needs (``plan``, over ``jobs``), the
JSONL manifest (``manifest``) and the receipts that let a lost record be rebuilt
(``receipts``), building records (``records``: the only place they are made), writing outputs
(``writing``: one path for fresh results and copies) and contact sheets (``sheets``), the output
folder checks (``folder``), the run itself (``runner``) and the dry run (``dryrun``); the run's
value objects: its configuration (``config``), counters and estimates (``progress``), what an
outcome means (``outcomes``: the one table from error to status, stop, exit code and words),
the events a reporter receives (``events``), stopping from outside (``control``) and the errors
that end a run early (``errors``). Users import these names from :mod:`clipnormals.batch`.

May import: the client core (``clipnormals._core``), ``clipnormals._images``,
``clipnormals._normals``, ``clipnormals._errors`` and ``clipnormals._atomic``. Never the CLI:
the runner reports through a reporter protocol with typed events, and the CLI renders them.
"""
