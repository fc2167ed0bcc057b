"""Every setting in one place: command-line flags, each with an environment fallback.

Names follow k8gb's Helm values where they exist (dnsZone, edgeDNSZone, edgeDNSServers, clusterGeoTag,
extGslbClustersGeoTags) and k8gb's operator environment (DNS_ZONE, EDGE_DNS_ZONE, ...), so a values file
translates one to one. Several load-balanced zones are given as matching comma-separated lists.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from backend.kube import selectors
from backend.model import normalize_name

# ExternalDNS's names for its sources (--source); the default is every one of them (a kind whose CRD is
# not installed is simply empty). Gslbs are k8gb's and are always read.
INGRESS_CLASS_ANNOTATION = "kubernetes.io/ingress.class"  # what --ingress-class matches without a className
SOURCES = ("service", "ingress", "crd", "gateway-httproute", "gateway-grpcroute", "gateway-tlsroute",
           "gateway-tcproute", "gateway-udproute")


@dataclass(frozen=True, slots=True)
class GslbZone:
    """A load-balanced zone (dnsZone) and the edge zone that delegates it (edgeDNSZone)."""

    dns_zone: str  # gb.foowidgets.k8s
    edge_zone: str  # foowidgets.k8s
    negative_ttl: int | None = None  # a ZoneDelegation's dnsZoneNegTTL; None: --negative-ttl

    def ns_name(self, geotag: str) -> str:
        """k8gb's name for a cluster's nameserver: gslb-ns-<geotag>-<zone minus edge zone>.<edge zone>."""
        label = self.dns_zone.removesuffix("." + self.edge_zone).replace(".", "-")
        return f"gslb-ns-{geotag}-{label}.{self.edge_zone}"


@dataclass(frozen=True, slots=True)
class Settings:
    zones: tuple[str, ...] = ()  # ExternalDNS-style zones served from Kubernetes names
    gslb_zones: tuple[GslbZone, ...] = ()
    edge_dns_servers: tuple[str, ...] = ()  # host or host:port
    cluster_geotag: str = ""
    ext_gslb_clusters_geotags: tuple[str, ...] = ()
    nameserver_address: str = ""  # this cluster's CoreDNS address, published as glue
    grpc_listen: str = "127.0.0.1:8053"
    http_listen: str = "127.0.0.1:8080"  # probes and /metrics: the pod port kubelet and Prometheus reach
    admin_listen: str = "127.0.0.1:8081"  # /explain and the rest: inside the pod only ("" = off)
    # What the clients of one HTTP listener hold at once (server.HttpSlots; backend/README.md "HTTP
    # limits"): kubelet's probes, one or two Prometheus and a port-forward use a handful of connections
    # and one scrape each. 256 connections with a 128 KiB socket buffer each is at most 32 MiB of kernel
    # memory; 16 /metrics replies that move (one waiting for its client to read gives its slot to the
    # next scrape), 2 per client address: room for a Prometheus beside clients that will not read.
    http_max_connections: int = 256
    metrics_max_scrapes: int = 16
    metrics_max_scrapes_per_client: int = 2
    listener_socket: str = ""  # unix socket of a `coredns-gslb listen` holding our sockets ("" = bind them)
    shutdown_drain_seconds: float = 10.0  # on SIGTERM keep answering until CoreDNS leaves, at most this long
    answer_process: bool = False  # answer gRPC from a child process of its own (backend/answer/)
    uvloop: bool = True  # run the answer loop on uvloop (libuv) instead of asyncio's own selector loop
    kubeconfig: str | None = None  # None: in-cluster
    namespace: str = "default"  # where Leases and created objects live
    identity: str = field(default_factory=lambda: os.environ.get("POD_NAME") or os.uname().nodename)
    default_ttl: int = 300
    dns_ttl_seconds: int = 30  # k8gb's default for GSLB names
    negative_ttl: int = 5  # SOA minimum for GSLB zones: NODATA on failover must not linger
    edns_payload: int = 1232
    geoip_db: str | None = None
    geoip_field: str = "datacenter"
    peer_poll_seconds: float = 1.0
    peer_grace_seconds: float = 10.0
    peer_dns_port: int = 53  # where peers' CoreDNS listen; glue carries no port, so only tests change it
    edge_sync_seconds: float = 30.0  # how often the edge records are checked for drift
    ns_record_ttl: int = 30  # k8gb's nsRecordTTL: TTL of the NS and glue records at the edge
    edge_publish_names: bool = True  # ExternalDNS-style names inside an edge zone go to the edge too
    txt_owner_id: str = ""  # ExternalDNS's --txt-owner-id for those names; "" = clusterGeoTag
    tsig_key_file: str | None = None
    tsig_secret: str | None = None  # namespace/name of a Secret holding the TSIG key
    # ExternalDNS's Gateway filters for the gateway-*route sources ("" = any)
    gateway_name: str = ""
    gateway_namespace: str = ""
    gateway_label_filter: str = ""  # a label selector on Gateways
    # LAB ONLY: where probes of an exposed address really connect ("10.2.1.167=127.0.8.67:8080"), because
    # the lab's addresses are answer data that must never be contacted. Host header and SNI are unchanged.
    probe_address_map: tuple[tuple[str, str, int | None], ...] = ()  # (exposed address, IP, port or None)
    # ExternalDNS's source filters, same flag names and meaning (backend/sources/filters.py)
    sources: tuple[str, ...] = SOURCES
    domain_filter: tuple[str, ...] = ()
    exclude_domains: tuple[str, ...] = ()
    regex_domain_filter: str = ""
    regex_domain_exclusion: str = ""
    annotation_filter: str = ""  # a label selector over annotations
    label_filter: str = ""
    ingress_class: tuple[str, ...] = ()

    @property
    def all_zones(self) -> tuple[str, ...]:
        return self.zones + tuple(z.dns_zone for z in self.gslb_zones)


def _split(value: str | None) -> tuple[str, ...]:
    return tuple(part.strip() for part in (value or "").split(",") if part.strip())


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def parse_address_map(values: Sequence[str]) -> tuple[tuple[str, str, int | None], ...]:
    """`ADDRESS=IP[:PORT]` entries ([IPv6]:PORT for a port after an IPv6 address); ValueError if malformed."""
    out = []
    for value in values:
        address, sep, to = (part.strip() for part in value.partition("="))
        host, colon, port = to.rpartition(":")
        if colon and port.isdigit() and (":" not in host or host.startswith("[")):
            to, number = host.strip("[]"), int(port)
        else:
            to, number = to.strip("[]"), None
        try:
            ipaddress.ip_address(address)
            ipaddress.ip_address(to)
        except ValueError:
            raise ValueError(f"{value!r} is not ADDRESS=IP[:PORT]") from None
        if not sep or (number is not None and not 0 < number < 65536):
            raise ValueError(f"{value!r} is not ADDRESS=IP[:PORT]")
        out.append((address, to, number))
    return tuple(out)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="coredns-gslb serve", description="Serve DNS answers to CoreDNS's grpc plugin."
    )
    p.add_argument("--zones", default=_env("ZONES", ""), help="ExternalDNS-style zones, comma-separated")
    p.add_argument("--dns-zone", default=_env("DNS_ZONE", ""), help="k8gb dnsZone(s), comma-separated")
    p.add_argument(
        "--edge-dns-zone", default=_env("EDGE_DNS_ZONE", ""), help="k8gb edgeDNSZone(s), one per dnsZone"
    )
    p.add_argument("--edge-dns-servers", default=_env("EDGE_DNS_SERVERS", ""), help="host[:port],...")
    p.add_argument("--cluster-geo-tag", default=_env("CLUSTER_GEO_TAG", ""))
    p.add_argument("--ext-gslb-clusters-geo-tags", default=_env("EXT_GSLB_CLUSTERS_GEO_TAGS", ""))
    p.add_argument("--nameserver-address", default=_env("NAMESERVER_ADDRESS", ""),
                   help="this cluster's CoreDNS IP, published as glue for its gslb-ns name")
    p.add_argument("--grpc-listen", default=_env("GRPC_LISTEN", "127.0.0.1:8053"))
    p.add_argument("--http-listen", default=_env("HTTP_LISTEN", "127.0.0.1:8080"),
                   help="/healthz, /readyz, /metrics (the pod port)")
    p.add_argument("--admin-listen", default=_env("ADMIN_LISTEN", "127.0.0.1:8081"),
                   help="/explain and the probes: keep it on 127.0.0.1 (port-forward reaches it); '' = off")
    p.add_argument("--http-max-connections", type=int,
                   default=int(_env("HTTP_MAX_CONNECTIONS", "256") or 256),
                   help="connections one HTTP listener holds at once; more are reset at once")
    p.add_argument("--metrics-max-scrapes", type=int, default=int(_env("METRICS_MAX_SCRAPES", "16") or 16),
                   help="/metrics replies in flight per HTTP listener; more get 503 at once")
    p.add_argument("--metrics-max-scrapes-per-client", type=int,
                   default=int(_env("METRICS_MAX_SCRAPES_PER_CLIENT", "2") or 2),
                   help="/metrics replies in flight per client address; more get 503 at once")
    p.add_argument("--listener-socket", default=_env("LISTENER_SOCKET", ""),
                   help="take the listening sockets from `coredns-gslb listen` at this unix socket")
    p.add_argument("--shutdown-drain-seconds", type=float,
                   default=float(_env("SHUTDOWN_DRAIN_SECONDS", "10") or 10),
                   help="on SIGTERM: unready, answer until CoreDNS disconnects, at most this long")
    p.add_argument("--answer-process", action=argparse.BooleanOptionalAction,
                   default=(_env("ANSWER_PROCESS", "false") or "false").lower() == "true",
                   help="answer CoreDNS's gRPC from a process of its own, whose GIL no control work shares")
    p.add_argument("--uvloop", action=argparse.BooleanOptionalAction,
                   default=(_env("UVLOOP", "true") or "true").lower() == "true",
                   help="run the event loops on uvloop (less CPU per answered query); --no-uvloop: asyncio's")
    p.add_argument("--kubeconfig", default=_env("KUBECONFIG"))
    p.add_argument("--namespace", default=_env("POD_NAMESPACE", "default"))
    p.add_argument("--default-ttl", type=int, default=int(_env("DEFAULT_TTL", "300") or 300))
    p.add_argument("--dns-ttl-seconds", type=int, default=int(_env("DNS_TTL_SECONDS", "30") or 30))
    p.add_argument("--negative-ttl", type=int, default=int(_env("NEGATIVE_TTL", "5") or 5))
    p.add_argument("--geoip-db", default=_env("GEOIP_DB"))
    p.add_argument("--geoip-field", default=_env("GEOIP_FIELD", "datacenter"))
    p.add_argument("--peer-poll-seconds", type=float, default=float(_env("PEER_POLL_SECONDS", "1") or 1))
    p.add_argument("--peer-grace-seconds", type=float, default=float(_env("PEER_GRACE_SECONDS", "10") or 10))
    p.add_argument("--peer-dns-port", type=int, default=int(_env("PEER_DNS_PORT", "53") or 53))
    p.add_argument("--edge-sync-seconds", type=float, default=float(_env("EDGE_SYNC_SECONDS", "30") or 30))
    p.add_argument("--ns-record-ttl", type=int, default=int(_env("NS_RECORD_TTL", "30") or 30))
    p.add_argument("--edge-publish-names", choices=("true", "false"),
                   default=(_env("EDGE_PUBLISH_NAMES", "true") or "true").lower(),
                   help="publish ExternalDNS-style names inside the edge zone to the edge DNS (RFC 2136)")
    p.add_argument("--txt-owner-id", default=_env("TXT_OWNER_ID", ""),
                   help="ExternalDNS owner id in the edge's TXT registry (default: the cluster geotag)")
    p.add_argument("--tsig-key-file", default=_env("TSIG_KEY_FILE"), help="BIND key file; never a flag value")
    p.add_argument(
        "--tsig-secret", default=_env("TSIG_SECRET"), help="namespace/name of a Secret with the key"
    )
    # ExternalDNS's Gateway filters: only routes attached to matching Gateways are published
    p.add_argument("--gateway-name", default=_env("GATEWAY_NAME", ""), help="only Gateways of this name")
    p.add_argument("--gateway-namespace", default=_env("GATEWAY_NAMESPACE", ""),
                   help="only Gateways in this namespace")
    p.add_argument("--gateway-label-filter", default=_env("GATEWAY_LABEL_FILTER", ""),
                   help="only Gateways matching this label selector")
    p.add_argument("--probe-address-map", default=_env("PROBE_ADDRESS_MAP", ""),
                   help="LAB ONLY: ADDRESS=IP[:PORT],... where probes of an exposed address connect instead")
    _filter_flags(p)
    return p


def _filter_flags(p: argparse.ArgumentParser) -> None:
    """ExternalDNS's filters: list flags repeat or take commas; the environment counts without the flag."""
    for flag, help_ in (
        ("--source", f"sources to read, repeatable ({', '.join(SOURCES)}; default all)"),
        ("--domain-filter", "publish only names in these domains (a leading dot: subdomains only)"),
        ("--exclude-domains", "do not publish names in these domains"),
        ("--ingress-class", "only Ingresses of these classes (spec.ingressClassName or the annotation)"),
    ):
        p.add_argument(flag, action="append", help=help_)
    for flag, default, help_ in (
        ("--regex-domain-filter", _env("REGEX_DOMAIN_FILTER", ""), "publish only names matching; overrides "
         "--domain-filter"),
        ("--regex-domain-exclusion", _env("REGEX_DOMAIN_EXCLUSION", ""), "do not publish names matching"),
        ("--annotation-filter", _env("ANNOTATION_FILTER", ""), "label selector over objects' annotations"),
        ("--label-filter", _env("LABEL_FILTER", ""), "label selector over objects' labels"),
    ):
        p.add_argument(flag, default=default, help=help_)


def _filter_settings(p: argparse.ArgumentParser, a: argparse.Namespace) -> dict[str, object]:
    """The filter flags checked as ExternalDNS checks them: a bad one stops start-up."""
    def listed(given: list[str] | None, env: str | None) -> tuple[str, ...]:
        return _split(",".join(given) if given is not None else env)

    sources = listed(a.source, _env("SOURCE")) or SOURCES
    ingress_class = listed(a.ingress_class, _env("INGRESS_CLASS"))
    unknown = sorted(set(sources) - set(SOURCES))
    if unknown:
        p.error(f"--source {', '.join(unknown)}: not one of {', '.join(SOURCES)}")
    try:
        for regex in (a.regex_domain_filter, a.regex_domain_exclusion):
            re.compile(regex)
    except re.error as e:
        p.error(f"--regex-domain-filter/--regex-domain-exclusion: {e}")
    for flag, text in (("--annotation-filter", a.annotation_filter), ("--label-filter", a.label_filter)):
        try:
            selector = selectors.parse(text)
        except ValueError as e:
            p.error(f"{flag}: {e}")
        if (flag == "--annotation-filter" and ingress_class
                and any(r.key == INGRESS_CLASS_ANNOTATION for r in selector.requirements)):
            p.error("--ingress-class is mutually exclusive with the kubernetes.io/ingress.class "
                    "annotation filter")
    return {
        "sources": tuple(dict.fromkeys(sources)),
        "domain_filter": listed(a.domain_filter, _env("DOMAIN_FILTER")),
        "exclude_domains": listed(a.exclude_domains, _env("EXCLUDE_DOMAINS")),
        "regex_domain_filter": a.regex_domain_filter,
        "regex_domain_exclusion": a.regex_domain_exclusion,
        "annotation_filter": a.annotation_filter,
        "label_filter": a.label_filter,
        "ingress_class": ingress_class,
    }


def from_args(argv: Sequence[str] | None = None) -> Settings:
    """Resolve flags and environment into Settings; a mismatch is a usage error, not a later surprise."""
    p = parser()
    a = p.parse_args(argv)
    dns_zones = [normalize_name(z) for z in _split(a.dns_zone)]
    edge_zones = [normalize_name(z) for z in _split(a.edge_dns_zone)]
    if len(edge_zones) == 1 and len(dns_zones) > 1:
        edge_zones *= len(dns_zones)
    if len(dns_zones) != len(edge_zones):
        p.error("--dns-zone and --edge-dns-zone need one edge zone per dns zone")
    for dz, ez in zip(dns_zones, edge_zones, strict=True):
        if not dz.endswith("." + ez):
            p.error(f"dnsZone {dz} is not inside edgeDNSZone {ez}")
    if dns_zones and not a.cluster_geo_tag:
        p.error("--cluster-geo-tag (clusterGeoTag) is required with --dns-zone")
    try:
        selectors.parse(a.gateway_label_filter)
    except ValueError as e:
        p.error(f"--gateway-label-filter: {e}")
    for flag in ("http_max_connections", "metrics_max_scrapes", "metrics_max_scrapes_per_client"):
        if getattr(a, flag) < 1:
            p.error(f"--{flag.replace('_', '-')} must be at least 1")
    try:
        probe_map = parse_address_map(_split(a.probe_address_map))
    except ValueError as e:
        p.error(f"--probe-address-map: {e}")
    return Settings(
        zones=tuple(normalize_name(z) for z in _split(a.zones)),
        gslb_zones=tuple(GslbZone(dz, ez) for dz, ez in zip(dns_zones, edge_zones, strict=True)),
        edge_dns_servers=_split(a.edge_dns_servers),
        cluster_geotag=a.cluster_geo_tag,
        ext_gslb_clusters_geotags=_split(a.ext_gslb_clusters_geo_tags),
        nameserver_address=a.nameserver_address,
        grpc_listen=a.grpc_listen,
        http_listen=a.http_listen,
        admin_listen=a.admin_listen,
        http_max_connections=a.http_max_connections,
        metrics_max_scrapes=a.metrics_max_scrapes,
        metrics_max_scrapes_per_client=a.metrics_max_scrapes_per_client,
        listener_socket=a.listener_socket,
        shutdown_drain_seconds=a.shutdown_drain_seconds,
        answer_process=a.answer_process,
        uvloop=a.uvloop,
        kubeconfig=a.kubeconfig,
        namespace=a.namespace,
        default_ttl=a.default_ttl,
        dns_ttl_seconds=a.dns_ttl_seconds,
        negative_ttl=a.negative_ttl,
        geoip_db=a.geoip_db,
        geoip_field=a.geoip_field,
        peer_poll_seconds=a.peer_poll_seconds,
        peer_grace_seconds=a.peer_grace_seconds,
        peer_dns_port=a.peer_dns_port,
        edge_sync_seconds=a.edge_sync_seconds,
        ns_record_ttl=a.ns_record_ttl,
        edge_publish_names=a.edge_publish_names == "true",
        txt_owner_id=a.txt_owner_id,
        tsig_key_file=a.tsig_key_file,
        tsig_secret=a.tsig_secret,
        gateway_name=a.gateway_name,
        gateway_namespace=a.gateway_namespace,
        gateway_label_filter=a.gateway_label_filter,
        probe_address_map=probe_map,
        **_filter_settings(p, a),  # type: ignore[arg-type]
    )
