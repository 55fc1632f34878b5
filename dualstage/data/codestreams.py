"""What a compressed payload will decode to, read from its own headers before any decoder runs.

A DICOM header's Rows x Columns is only a claim: a JPEG, JPEG-LS or JPEG 2000 frame carries its own
size (the SOF / SOF55 segment, the SIZ marker) and a decoder allocates for that one. A deflated
DICOM data set inflates to whatever its stream holds. These readers let :mod:`dualstage.data.dicom`
refuse a payload that would decode to more than its header said, or to more than the pixel limit.
"""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

__all__ = ["jpeg_size", "j2k_size", "stream_size", "inflates_past"]

# start-of-frame markers (baseline, extended, progressive, lossless, arithmetic; JPEG-LS SOF55)
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF, 0xF7}
_STANDALONE = {0x01, *range(0xD0, 0xD8)}  # TEM, RSTn: markers without a length
_SCAN_LIMIT = 1 << 20  # a frame header lies in the first bytes; never walk a whole stream


def jpeg_size(frame: bytes) -> tuple[int, int] | None:
    """(height, width) of a JPEG / JPEG-LS stream from its start-of-frame segment (height 0: set
    later by a DNL marker); None when the stream has no SOF where one belongs."""
    if frame[:2] != b"\xff\xd8":
        return None
    pos, end = 2, min(len(frame), _SCAN_LIMIT)
    while pos + 4 <= end:
        if frame[pos] != 0xFF:
            return None
        marker = frame[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker in _STANDALONE:
            pos += 2
            continue
        (length,) = struct.unpack(">H", frame[pos + 2 : pos + 4])
        if marker in _SOF:
            if pos + 9 > len(frame):
                return None
            height, width = struct.unpack(">HH", frame[pos + 5 : pos + 9])
            return int(height), int(width)
        if marker == 0xDA or length < 2:  # a scan before any frame header: malformed
            return None
        pos += 2 + length
    return None


def j2k_size(frame: bytes) -> tuple[int, int] | None:
    """(height, width) of a JPEG 2000 / HTJ2K codestream (image area of its SIZ marker), also inside
    a JP2 box wrapper; None when there is no SIZ marker."""
    at = frame.find(b"\xff\x4f\xff\x51", 0, _SCAN_LIMIT)
    if at < 0 or at + 24 > len(frame):
        return None
    xsiz, ysiz, xo, yo = struct.unpack(">IIII", frame[at + 8 : at + 24])
    return int(ysiz) - int(yo), int(xsiz) - int(xo)


def stream_size(frame: bytes, family: str) -> tuple[int, int] | None:
    """(height, width) a compressed frame declares: ``family`` 'jpeg' (JPEG, JPEG-LS) or 'j2k'."""
    return jpeg_size(frame) if family == "jpeg" else j2k_size(frame)


def inflates_past(path: str | Path, offset: int, bound: int, chunk: int = 1 << 16) -> bool:
    """Whether the raw deflate stream of ``path`` from byte ``offset`` inflates to more than ``bound``
    bytes; inflated in bounded steps and thrown away (memory stays at ``chunk``-sized buffers)."""
    inflater, total = zlib.decompressobj(-zlib.MAX_WBITS), 0
    with open(path, "rb") as fh:
        fh.seek(offset)
        while True:
            data = fh.read(chunk)
            if not data:
                return False
            while data and not inflater.eof:
                total += len(inflater.decompress(data, chunk))
                if total > bound:
                    return True
                data = inflater.unconsumed_tail
            if inflater.eof:
                return False
