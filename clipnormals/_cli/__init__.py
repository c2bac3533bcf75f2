"""The ``clipnormals`` command (the ``cli`` extra: typer and rich).

Owns the typer declarations (``app``), what each command does once its options are parsed
(``commands``), the progress display (``progress``), how text reaches the terminal and how a
command fails in one line (``output``: every line made printable, control characters escaped),
internal errors (``crash``: one line, the traceback in a file), the ``emulator`` command
(``emulator``) and the demo (``demo``). What an error means, its exit code and its advice come
from the batch's outcome table; the CLI never decides them itself.

May import: everything below it (``clipnormals._batch``, ``clipnormals._core``, the emulator).
Nothing imports the CLI but the console entry point. The demo uses the batch runner and the
emulator, not the other commands.
"""
