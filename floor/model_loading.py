"""Loading pretrained weights quietly: a failure is reported once, in our one line."""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager


@contextmanager
def quiet_loading():
    """Silence the libraries' own warnings and error logs while weights load: a failure is reported once,
    in our one line, and a success needs no chatter."""
    logging.disable(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)
