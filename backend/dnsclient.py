"""One question to another DNS server, and an answer trusted only when it fits the question.

Peers and the edge are other people's servers: an answer with a foreign name, a wrong type, too many
records or bytes that do not parse is an error here, never data. Callers treat every error alike
(the server is unreachable for now), so an attacker or a broken peer can only make us keep the last
good answer for a while, not publish a new one.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import dns.asyncquery
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype

MAX_RECORDS = 64  # more targets than any sane host has; a bigger answer is a peer gone wrong
PAYLOAD = 1232


class QueryError(Exception):
    """The server did not answer, or answered something we will not use; the text says which."""


@dataclass(frozen=True, slots=True)
class Server:
    host: str
    port: int = 53

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def parse_server(text: str, default_port: int = 53) -> Server:
    """`10.0.0.1`, `10.0.0.1:5353`, `::1`, `[::1]:5353`: the forms edgeDNSServers takes."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else default_port
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    else:
        host, port = text, default_port
    ipaddress.ip_address(host)  # addresses only: a name would need a resolver we do not trust yet
    if not 0 < port < 65536:
        raise ValueError(f"port out of range in {text!r}")
    return Server(host, port)


def _query(qname: str, rdtype: str, payload: int, recursion: bool) -> dns.message.Message:
    query = dns.message.make_query(qname, rdtype, use_edns=0, payload=payload)
    if not recursion:
        query.flags &= ~dns.flags.RD
    return query


async def _exchange(server: Server, qname: str, rdtype: str, timeout: float,
                    recursion: bool) -> dns.message.Message:
    """UDP first; a truncated answer is asked again over TCP, announcing a 64 KiB buffer (a server
    that sizes its answer by EDNS would cut a TCP answer short at our UDP size)."""
    response = await dns.asyncquery.udp(_query(qname, rdtype, PAYLOAD, recursion), server.host,
                                        timeout=timeout, port=server.port)
    if response.flags & dns.flags.TC:
        response = await dns.asyncquery.tcp(_query(qname, rdtype, 65535, recursion), server.host,
                                            timeout=timeout, port=server.port)
        if response.flags & dns.flags.TC:
            raise QueryError(f"{server}: {qname} {rdtype}: truncated even over TCP")
    return response


async def ask(server: Server, qname: str, rdtype: str, *, timeout: float, tries: int = 2,
              recursion: bool = False) -> dns.message.Message:
    """One question, answered in full (a truncated answer is never used); timeouts are retried,
    anything odd is not."""
    last = "no attempt"
    for _ in range(max(1, tries)):
        try:
            return await _exchange(server, qname, rdtype, timeout, recursion)
        except QueryError:
            raise
        except dns.exception.Timeout:
            last = f"timeout after {timeout:g}s"
        except (OSError, EOFError) as e:
            last = f"{type(e).__name__}: {e}"
        except Exception as e:  # garbage: dnspython raises many kinds for bytes that do not parse
            raise QueryError(f"{server}: bad answer to {qname} {rdtype}: {type(e).__name__}: {e}") from e
    raise QueryError(f"{server}: {qname} {rdtype}: {last}")


def _rdatas(response: dns.message.Message, qname: str, rdtype: str, *, authoritative: bool,
            sections: tuple[str, ...], max_records: int) -> list[dns.rdata.Rdata]:
    rcode = response.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        raise QueryError(f"{qname} {rdtype}: rcode {dns.rcode.to_text(rcode)}")
    if authoritative and not response.flags & dns.flags.AA:
        raise QueryError(f"{qname} {rdtype}: answer is not authoritative")
    want_name = dns.name.from_text(qname)
    want_type = dns.rdatatype.from_text(rdtype)
    for rrset in response.answer:
        if rrset.name != want_name or rrset.rdtype != want_type or rrset.rdclass != dns.rdataclass.IN:
            raise QueryError(f"{qname} {rdtype}: unexpected record {rrset.name} "
                             f"{dns.rdatatype.to_text(rrset.rdtype)} in the answer")
    found: list[dns.rdata.Rdata] = []
    for section in sections:
        for rrset in getattr(response, section):
            if rrset.name == want_name and rrset.rdtype == want_type and rrset.rdclass == dns.rdataclass.IN:
                found.extend(rrset)
    if len(found) > max_records:
        raise QueryError(f"{qname} {rdtype}: {len(found)} records, more than {max_records}")
    return found


def rdata_texts(response: dns.message.Message, qname: str, rdtype: str, *, authoritative: bool,
                sections: tuple[str, ...] = ("answer",), max_records: int = MAX_RECORDS) -> tuple[str, ...]:
    """The values of `qname`/`rdtype` in the response, after checking that nothing else is there.

    NXDOMAIN and NODATA give an empty tuple. `sections` adds "authority" for a referral (the edge
    answers the NS set of a delegated zone from its parent side).
    """
    found = _rdatas(response, qname, rdtype, authoritative=authoritative, sections=sections,
                    max_records=max_records)
    return tuple(sorted({rd.to_text() for rd in found}))


def txt_strings(response: dns.message.Message, qname: str, *,
                max_records: int = MAX_RECORDS) -> tuple[str, ...]:
    """Each TXT record at `qname` as one text (its 255-byte strings joined), checked like rdata_texts."""
    found = _rdatas(response, qname, "TXT", authoritative=True, sections=("answer",), max_records=max_records)
    try:
        return tuple(sorted({b"".join(rd.strings).decode() for rd in found}))  # type: ignore[attr-defined]
    except UnicodeDecodeError as e:
        raise QueryError(f"{qname} TXT: not UTF-8") from e
