"""The ``clipnormals`` command (the ``cli`` extra: typer and rich).

Owns the typer declarations (``app``), what each command does once its options are parsed
(``commands``), the progress display (``progress``), the ``emulator`` command (``emulator``)
and the demo (``demo``).

May import: everything below it (``clipnormals._batch``, ``clipnormals._core``, the emulator).
Nothing imports the CLI but the console entry point. The demo uses the batch runner and the
emulator, not the other commands.
"""
