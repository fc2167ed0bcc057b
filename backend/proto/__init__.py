"""Generated gRPC stubs for CoreDNS's DnsService (regenerate with `make proto`)."""
