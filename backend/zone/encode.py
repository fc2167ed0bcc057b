"""Compile-time wire encoding: names, rdata and name compression, without dnspython on the common path.

A recompile touches every name in the model, so it must be cheap: A/AAAA and names are encoded with
the standard library, dnspython parses only the rarer types (MX, SRV, TXT, SOA, ...) once each.
Names are lowercase wire bytes throughout; they double as the table's lookup keys.
"""

from __future__ import annotations

import socket
import struct

import dns.exception
import dns.name
import dns.rdata
import dns.rdataclass
import dns.rdatatype

T_A, T_NS, T_CNAME, T_SOA, T_PTR, T_MX, T_TXT, T_AAAA = 1, 2, 5, 6, 12, 15, 16, 28
MAX_POINTER = 0x3FFF

# Rdata is either opaque bytes, or (prefix, names, suffix) for the types whose names RFC 1035 lets
# us compress (RFC 3597 section 4: only the well-known types).
Rdata = bytes | tuple[bytes, tuple[bytes, ...], bytes]


class BadData(ValueError):
    """A name or target that cannot be encoded; the caller reports it and skips the record."""


def name_wire(text: str) -> bytes:
    """Lowercase wire form of an absolute name ("a.b", "a.b." and "" for the root)."""
    text = text.strip().lower()
    if "\\" in text or not text.isascii():
        try:
            return dns.name.from_text(text).to_wire().lower()
        except dns.exception.DNSException as e:
            raise BadData(f"not a valid DNS name: {text!r} ({e})") from e
    text = text.removesuffix(".")
    if not text:
        return b"\0"
    out = bytearray()
    for label in text.split("."):
        if not 0 < len(label) <= 63:
            raise BadData(f"not a valid DNS name: {text!r} (empty or over-long label)")
        out.append(len(label))
        out += label.encode()
    out.append(0)
    if len(out) > 255:
        raise BadData(f"not a valid DNS name: {text!r} (over 255 bytes)")
    return bytes(out)


def name_text(key: bytes) -> str:
    """The name `name_wire` wrote, as text without the final dot (explain shows it)."""
    return dns.name.from_wire(key, 0)[0].to_text(omit_final_dot=True)


def parent(key: bytes) -> bytes:
    return key[key[0] + 1:]


def is_subdomain(name: bytes, ancestor: bytes) -> bool:
    """`name` equals `ancestor` or lies below it, on label boundaries."""
    pos = 0
    while True:
        if name[pos:] == ancestor:
            return True
        if not name[pos]:
            return False
        pos += name[pos] + 1


def rdata(rdtype: int, value: str) -> Rdata:
    """Encode one target given in presentation format."""
    try:
        if rdtype == T_A:
            return socket.inet_pton(socket.AF_INET, value.strip())
        if rdtype == T_AAAA:
            return socket.inet_pton(socket.AF_INET6, value.strip())
        if rdtype in (T_CNAME, T_NS, T_PTR):
            return b"", (name_wire(value),), b""
        if rdtype == T_TXT and not value.startswith('"'):
            # ExternalDNS TXT targets are the text itself, not presentation format; a TXT string
            # holds at most 255 bytes, so longer text becomes several strings
            text = value.encode()
            chunks = [text[i:i + 255] for i in range(0, len(text), 255)] or [b""]
            return b"".join(bytes((len(chunk),)) + chunk for chunk in chunks)
        rd = dns.rdata.from_text(dns.rdataclass.IN, rdtype, value, origin=dns.name.root, relativize=False)
    except (OSError, dns.exception.DNSException, ValueError) as e:
        raise BadData(f"bad {dns.rdatatype.to_text(rdtype)} target {value!r}: {e}") from e
    if rdtype == T_MX:
        return struct.pack(">H", rd.preference), (rd.exchange.to_wire().lower(),), b""
    if rdtype == T_SOA:
        return b"", (rd.mname.to_wire().lower(), rd.rname.to_wire().lower()), struct.pack(
            ">IIIII", rd.serial, rd.refresh, rd.retry, rd.expire, rd.minimum)
    return rd.to_wire()


def seed(anchor: bytes, qlen: int) -> dict[bytes, int]:
    """Compression targets inside the question: `anchor` is a suffix of a `qlen`-byte query name."""
    start = 12 + qlen - len(anchor)
    compress: dict[bytes, int] = {}
    pos = 0
    while anchor[pos]:
        compress[anchor[pos:]] = start + pos
        pos += anchor[pos] + 1
    return compress


def put_name(out: bytearray, base: int, compress: dict[bytes, int], name: bytes) -> None:
    """Append `name`, pointing at the longest suffix already in the message (`base` = offset of out[0])."""
    pos = 0
    start = base + len(out)
    while name[pos]:
        suffix = name[pos:]
        ptr = compress.get(suffix)
        if ptr is not None:
            out += name[:pos]
            out += (0xC000 | ptr).to_bytes(2, "big")
            return
        if start + pos <= MAX_POINTER:
            compress[suffix] = start + pos
        pos += name[pos] + 1
    out += name


def put_rdata(out: bytearray, base: int, compress: dict[bytes, int], rd: Rdata) -> None:
    """Append RDLENGTH and RDATA."""
    if type(rd) is bytes:
        out += len(rd).to_bytes(2, "big")
        out += rd
        return
    prefix, names, suffix = rd
    at = len(out)
    out += b"\0\0"
    out += prefix
    for name in names:
        put_name(out, base, compress, name)
    out += suffix
    out[at:at + 2] = (len(out) - at - 2).to_bytes(2, "big")
