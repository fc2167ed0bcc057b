// Command grpc-floor is the bench's floor for CoreDNS's grpc hop: it answers every query the grpc plugin
// forwards with one A record (10.0.0.1, TTL 30) and no policy, in grpc-go with CoreDNS's own `pb`
// service and miekg/dns, the stack a Go backend would use. CoreDNS -> grpc -> grpc-floor shows the
// latency and CPU the hop itself costs on this machine, beside CoreDNS -> grpc -> our backend
// (bench/throughput.py, bench/churn.py). Usage: grpc-floor HOST:PORT.
package main

import (
	"context"
	"fmt"
	"net"
	"os"

	"github.com/coredns/coredns/pb"
	"github.com/miekg/dns"
	"google.golang.org/grpc"
)

type floor struct {
	pb.UnimplementedDnsServiceServer
}

var address = net.ParseIP("10.0.0.1")

func (floor) Query(_ context.Context, in *pb.DnsPacket) (*pb.DnsPacket, error) {
	q := new(dns.Msg)
	if err := q.Unpack(in.Msg); err != nil {
		return nil, err
	}
	r := new(dns.Msg)
	r.SetReply(q)
	r.Authoritative = true
	if len(q.Question) == 1 && q.Question[0].Qtype == dns.TypeA {
		r.Answer = []dns.RR{&dns.A{Hdr: dns.RR_Header{Name: q.Question[0].Name, Rrtype: dns.TypeA,
			Class: dns.ClassINET, Ttl: 30}, A: address}}
	}
	out, err := r.Pack()
	if err != nil {
		return nil, err
	}
	return &pb.DnsPacket{Msg: out}, nil
}

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: grpc-floor HOST:PORT")
		os.Exit(2)
	}
	l, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	s := grpc.NewServer()
	pb.RegisterDnsServiceServer(s, floor{})
	fmt.Fprintln(os.Stderr, s.Serve(l))
	os.Exit(1)
}
