"""The client core: the request path every image takes, and the machinery around it.

Owns the asynchronous client (``client``), its blocking facade (``sync``), streaming many images
(``map``), the rate limiter (``limiter``, the only importer of aiolimiter), retries (``retry``,
the only importer of tenacity), the credit ledger (``credits``), request statistics and per-item
results (``results``) and the configuration read from the environment (``config``, the only
reader of environment variables).

May import: ``clipnormals._errors``, ``clipnormals._version``, ``clipnormals._images`` (to
prepare uploads) and ``clipnormals._normals`` (to wrap responses). Never the batch runner, the
CLI, the emulator or Redis: those build on the core, not the other way round.
"""
