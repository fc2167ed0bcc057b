// Command etcd is etcd's own server entry point, built from the Go module proxy: Debian's etcd-server
// (3.4.23) is older than the 3.4.31 that kube-apiserver 1.34 needs for consistent reads from cache.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
