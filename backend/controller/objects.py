"""The objects the leader creates, as k8gb creates them: the Ingress a Gslb with spec.ingress owns,
and the Gslb an Ingress annotated `k8gb.io/strategy` asks for. Pure functions; the manager does I/O.
"""

from __future__ import annotations

from backend.model import Obj

MANAGED_BY = "app.k8gb.io/managed-by"
STRATEGY = "k8gb.io/strategy"
PRIMARY_GEOTAG = "k8gb.io/primary-geotag"
DNS_TTL = "k8gb.io/dns-ttl-seconds"


def owner_reference(obj: Obj) -> Obj:
    meta = obj["metadata"]
    return {
        "apiVersion": obj["apiVersion"],
        "kind": obj["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def owned_by(obj: Obj, owner: Obj) -> bool:
    uid = owner["metadata"].get("uid")
    return any(ref.get("uid") == uid for ref in (obj.get("metadata") or {}).get("ownerReferences") or ())


def owned_ingress(gslb: Obj) -> Obj:
    """The Ingress k8gb makes from spec.ingress: same name and namespace, labelled and owned, so it
    goes away with its Gslb (garbage collection)."""
    meta = gslb["metadata"]
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "Ingress",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": {MANAGED_BY: "gslb"},
            "ownerReferences": [owner_reference(gslb)],
        },
        "spec": gslb["spec"]["ingress"],
    }


def merge_into(current: Obj, desired: Obj) -> Obj | None:
    """`current` updated to carry desired's spec, labels and controller ownerReference; None if it
    already does. Everything else on the live object (status, other labels, annotations, other owners)
    is kept; a controller reference to an earlier Gslb of the same name (deleted and re-created
    before garbage collection ran) is replaced, as an object may have only one controller."""
    meta = current.setdefault("metadata", {})
    labels = meta.setdefault("labels", {})
    want_labels = desired["metadata"].get("labels") or {}
    (want_ref,) = desired["metadata"]["ownerReferences"]
    refs = meta.get("ownerReferences") or []
    if (
        current.get("spec") == desired["spec"]
        and want_ref in refs
        and all(labels.get(k) == v for k, v in want_labels.items())
    ):
        return None
    others = [r for r in refs if not r.get("controller") and r.get("uid") != want_ref["uid"]]
    meta["ownerReferences"] = [*others, want_ref]
    labels.update(want_labels)
    current["spec"] = desired["spec"]
    return current


def gslb_for_ingress(ingress: Obj, api_version: str) -> tuple[Obj, list[str]]:
    """The Gslb for an annotated Ingress (resourceRef to it, owned by it), and the annotation problems
    found on the way (each worth a Warning Event on the Ingress). A missing primary geotag is left to
    the Gslb's own Ready condition, where k8gb users look for it."""
    meta = ingress["metadata"]
    notes = meta.get("annotations") or {}
    strategy: Obj = {"type": notes[STRATEGY].strip()}
    problems: list[str] = []
    if notes.get(PRIMARY_GEOTAG, "").strip():
        strategy["primaryGeoTag"] = notes[PRIMARY_GEOTAG].strip()
    if DNS_TTL in notes:
        try:
            ttl = int(notes[DNS_TTL])
            if ttl < 0:
                raise ValueError
            strategy["dnsTtlSeconds"] = ttl
        except ValueError:
            problems.append(
                f"annotation {DNS_TTL}={notes[DNS_TTL]!r} is not a non-negative integer; using the default"
            )
    gslb = {
        "apiVersion": api_version,
        "kind": "Gslb",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": {MANAGED_BY: "ingress"},
            "ownerReferences": [owner_reference(ingress)],
        },
        "spec": {
            "resourceRef": {
                "apiVersion": "networking.k8s.io/v1",
                "kind": "Ingress",
                "name": meta["name"],
                "namespace": meta["namespace"],
            },
            "strategy": strategy,
        },
    }
    return gslb, problems


def gslb_needs_update(current: Obj, desired: Obj) -> Obj | None:
    """Only spec.strategy and spec.resourceRef follow the annotations; None if they already do.
    The apiserver defaults dnsTtlSeconds, so an absent desired TTL accepts whatever is there."""
    spec = current.setdefault("spec", {})
    want = dict(desired["spec"]["strategy"])
    have = spec.get("strategy") or {}
    want.setdefault("dnsTtlSeconds", have.get("dnsTtlSeconds"))
    want = {k: v for k, v in want.items() if v is not None}
    if have == want and spec.get("resourceRef") == desired["spec"]["resourceRef"]:
        return None
    spec["strategy"] = want
    spec["resourceRef"] = desired["spec"]["resourceRef"]
    return current
