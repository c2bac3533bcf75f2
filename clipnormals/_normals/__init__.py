"""Normal maps as numbers: decoding the API's JPEG, the person mask, relighting and pictures.

Owns :class:`NormalMap` (lazy, read-only arrays; mapping back to the source's size and
orientation; export), the vector maths and sign conventions (``vectors``), the person mask
(``mask``), relighting (``relight``), rendering arrays to pictures (``render``), contact sheets
(``sheets``), file export (``export``), a picture's pixels as an array (``pixels``) and the
row bands large images are processed in, over a small thread pool (``parallel``).

May import: ``clipnormals._errors``, ``clipnormals._atomic`` and ``clipnormals._images`` (the
geometry of a prepared upload). Nothing above it: the client, the batch runner and the CLI use
normal maps, never the reverse.
"""
