"""Image preparation without a client: what ``AsyncClient`` does to an image before upload.

The client prepares every image itself (``AsyncClient.prepare`` gives the result without
sending); these are for programs that check or convert images on their own, in a worker thread
or a process pool. The types (``PrepareOptions``, ``PreparedImage``, ``ImageSource``) are also
at the top level, since the client takes and returns them.

Example:
    >>> from clipnormals.images import PrepareOptions, prepare_image, sniff_format
    >>> with open("portrait.jpg", "rb") as f:
    ...     data = f.read()
    >>> sniff_format(data)
    'JPEG'
    >>> prepare_image(data, options=PrepareOptions(strict=True)).size
    (512, 512)
"""

from ._images.prepare import ImageSource, PreparedImage, PrepareOptions, prepare_image, sniff_format

__all__ = ["ImageSource", "PrepareOptions", "PreparedImage", "prepare_image", "sniff_format"]
