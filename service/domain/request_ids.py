"""The request id: chosen by a caller or made here, it names one request in every log line,
from the HTTP request through the AMQP message to the consumer that processes it."""

from __future__ import annotations

import re

# The header that carries it, over HTTP and over AMQP alike.
REQUEST_ID_HEADER = "x-request-id"
# A caller's request id is kept when it is sane: short, and nothing a log reader would trip on.
SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


def is_sane_request_id(value: object) -> bool:
    return isinstance(value, str) and SANE_REQUEST_ID.fullmatch(value) is not None
