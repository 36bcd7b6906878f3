"""The byte alphabet of CLIP's byte-level BPE, shared by every tokenizer the engine builds locally."""

from __future__ import annotations


def byte_alphabet() -> list[str]:
    """The 256 printable stand-ins byte-level BPE uses for the byte values 0..255, in byte order.

    Printable Latin-1 bytes stand for themselves; the others map to code points from 256 upward, the
    table GPT-2 and CLIP vocabularies are written in.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for byte in range(256):
        if byte in printable:
            chars.append(chr(byte))
        else:
            chars.append(chr(256 + extra))
            extra += 1
    return chars
