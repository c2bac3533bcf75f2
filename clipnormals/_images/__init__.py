"""Image preparation: what the user passes in, turned into bytes the API accepts.

Owns reading sources (paths, bytes, files, PIL images, numpy arrays), recognising formats from
their bytes, EXIF orientation, conversion, downscaling and re-encoding, and refusing what cannot
be sent (not an image, truncated or zero-filled, a decompression bomb, over the limits in strict
mode). Modules: ``formats`` (the one sniffer, optional readers), ``integrity`` (is this file
whole, with the walks of ``codestreams`` for JPEG and JPEG 2000 and ``bmff`` for HEIF/AVIF),
``decode`` (a strict decode, and the end test of WEBP and AVIF), ``orientation`` (the one EXIF
orientation table), ``sources``, ``reencode``, ``prepare``. Every function here is blocking and
shares no state; the client runs them in worker threads.

May import: ``clipnormals._errors`` only. Everything else in the package builds on it.
"""
