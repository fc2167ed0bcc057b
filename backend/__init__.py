"""coredns-gslb: the CoreDNS grpc backend that serves ExternalDNS names and k8gb-style GSLB answers."""
