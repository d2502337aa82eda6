"""SIGTERM during an S3 write ends the write cleanly: its multipart upload is aborted, not left behind.

SageMaker's StopProcessingJob and the local backend stop a job with SIGTERM, whose default action ends the
process at once: an s3fs or boto3 multipart upload in progress then stays open in the bucket (its parts are
billed until a lifecycle rule removes them). While a write runs in the main thread, :func:`sigterm_raises`
turns SIGTERM into :class:`Terminated` (a ``SystemExit`` with code 143, the code of a process ended by
SIGTERM), so the write's own cleanup (the fsspec transaction, boto3's transfer manager) aborts the upload
before the process ends. A repeated SIGTERM during that cleanup is ignored. ``kill -9`` cannot be caught:
the bucket's ``AbortIncompleteMultipartUpload`` lifecycle rule (README) covers it.
"""

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

logger = logging.getLogger(__name__)

EXIT_CODE = 128 + signal.SIGTERM


class Terminated(SystemExit):
    """SIGTERM arrived during an S3 write: the write was abandoned and its upload aborted."""


def _ignore(signum: int, frame: Any) -> None:
    logger.warning("SIGTERM again: still aborting the upload in progress")


@contextmanager
def sigterm_raises(what: str) -> Iterator[None]:
    """Within the block (main thread only), SIGTERM raises :class:`Terminated` instead of ending the process.

    Args:
        what: The write in progress, for the log (e.g. ``saving 'forecasts' to s3://...``).
    """
    if threading.current_thread() is not threading.main_thread():
        yield  # only the main thread handles signals; the lifecycle rule covers other threads' writes
        return
    previous = signal.getsignal(signal.SIGTERM)

    def on_sigterm(signum: int, frame: Any) -> None:
        signal.signal(signal.SIGTERM, _ignore)
        logger.error("SIGTERM while %s: aborting the upload, nothing is written", what)
        raise Terminated(EXIT_CODE)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)
