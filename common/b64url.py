"""Unpadded URL-safe base64, the form of the opaque strings the services hand out (page
tokens, etags): safe in JSON, URLs and headers as they are."""

from __future__ import annotations

import base64
import binascii


def encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def decode(text: str) -> bytes | None:
    """The bytes `text` encodes, or None when it is not unpadded URL-safe base64."""
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        return None
