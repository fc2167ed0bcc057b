"""The committed stubs are what grpcio-tools makes from proto/dns.proto, and the wire matches CoreDNS's."""

from __future__ import annotations

from backend.proto import build, dns_pb2, dns_pb2_grpc


def test_committed_stubs_match_regenerated() -> None:
    for name, text in build.generate().items():
        committed = (build.OUT / name).read_text()
        assert committed == text, f"{name} is stale: run `make proto` and commit the result"


def test_wire_is_coredns_dnspacket() -> None:
    # field 1, wire type 2 (length-delimited): what CoreDNS's pb.DnsPacket marshals to
    assert dns_pb2.DnsPacket(msg=b"\x01\x02").SerializeToString() == b"\x0a\x02\x01\x02"
    assert dns_pb2.DESCRIPTOR.package == "coredns.dns"
    assert dns_pb2.DESCRIPTOR.services_by_name["DnsService"].methods_by_name["Query"].full_name == (
        "coredns.dns.DnsService.Query"
    )
    assert hasattr(dns_pb2_grpc, "DnsServiceServicer")
