"""DNSEndpoint objects (externaldns.k8s.io/v1alpha1) -> Endpoints: A, AAAA, CNAME, TXT, SRV, MX, NS.

Each spec.endpoints[] entry is checked against its recordType; a bad entry (or a bad target in it)
is skipped with a Problem and the object's other entries are still published. Targets come out in
presentation format: TXT quoted, names in rdata (CNAME, NS, SRV, MX) fully qualified with the dot.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from backend.model import Endpoint, Obj, check_name, object_ref, typed_address
from backend.sources import annotations as ann
from backend.sources.annotations import Problem

TYPES = ("A", "AAAA", "CNAME", "TXT", "SRV", "MX", "NS")


def _ip(record_type: str) -> Callable[[str], str | None]:
    def check(value: str) -> str | None:
        typed = typed_address(value.strip())
        return typed[1] if typed is not None and typed[0] == record_type else None

    return check


def _name(value: str) -> str | None:
    name = check_name(value)
    return None if name is None else name + "."


def _u16(text: str) -> bool:
    return text.isdigit() and int(text) <= 65535


def _srv(value: str) -> str | None:
    """"priority weight port target", as ExternalDNS and RFC 2782 write it."""
    parts = value.split()
    if len(parts) != 4 or not all(_u16(p) for p in parts[:3]):
        return None
    target = "." if parts[3] == "." else _name(parts[3])  # "." : no service here (RFC 2782)
    if target is None:
        return None
    return f"{int(parts[0])} {int(parts[1])} {int(parts[2])} {target.rstrip('.')}."


def _mx(value: str) -> str | None:
    parts = value.split()
    if len(parts) != 2 or not _u16(parts[0]):
        return None
    target = _name(parts[1])
    return None if target is None else f"{int(parts[0])} {target}"


def _txt(value: str) -> str | None:
    """One character-string per target; already-quoted values (ExternalDNS's registry style) are kept."""
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    if len(value.encode()) > 255:
        return None
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


CHECKS: dict[str, Callable[[str], str | None]] = {
    "A": _ip("A"), "AAAA": _ip("AAAA"), "CNAME": _name, "NS": _name, "TXT": _txt, "SRV": _srv, "MX": _mx,
}


def endpoints(obj: Obj, zones: Sequence[str]) -> tuple[list[Endpoint], list[Problem]]:
    if ann.other_controller(obj):
        return [], []
    ref = object_ref(obj)
    eps: list[Endpoint] = []
    problems: list[Problem] = []
    for i, entry in enumerate((obj.get("spec") or {}).get("endpoints") or ()):
        where = f"spec.endpoints[{i}]"
        name = check_name(str(entry.get("dnsName") or ""))
        rtype = str(entry.get("recordType") or "A").upper()
        if name is None:
            why = f"{where}: dnsName {entry.get('dnsName')!r} is not a DNS name"
            problems.append(Problem("InvalidHostname", why))
            continue
        if rtype not in CHECKS:
            problems.append(Problem("UnsupportedRecordType", f"{where}: recordType {rtype} (supported: "
                                    f"{', '.join(TYPES)})"))
            continue
        ttl = entry.get("recordTTL")
        if ttl is not None and (not isinstance(ttl, int) or not 0 <= ttl <= ann.TTL_MAX):
            problems.append(Problem("InvalidTTL", f"{where}: recordTTL {ttl!r}; using the default"))
            ttl = None
        values: list[str] = []
        for raw in entry.get("targets") or ():
            value = CHECKS[rtype](str(raw))
            if value is None:
                problems.append(Problem("InvalidTarget", f"{where}: {raw!r} is not valid {rtype} data"))
            elif value not in values:
                values.append(value)
        made, more = ann.endpoints_for([name], {rtype: values} if values else {}, ttl or None, ref, zones)
        eps += made
        problems += more
    return ann.merge(eps), problems
