#!/bin/sh
# One-shot per cluster: wait for the API server, add a kwok Node (Pods on it turn Ready, so
# EndpointSlices carry the health signal), install the CRDs, apply the given manifests.
# Usage (from docker-compose.yml): setup.sh CLUSTER MANIFEST...
set -eu
cluster=$1
shift
k() { kubectl --kubeconfig "/compose/kubeconfig-$cluster" "$@"; }

tries=0
until k get --raw /readyz >/dev/null 2>&1; do
    tries=$((tries + 1))
    if [ "$tries" -ge 120 ]; then
        echo "setup $cluster: the API server did not become ready in 120 s" >&2
        exit 1
    fi
    sleep 1
done

k apply -f - <<NODE
apiVersion: v1
kind: Node
metadata:
  name: kwok-$cluster-0
  annotations:
    kwok.x-k8s.io/node: fake
  labels:
    type: kwok
    kubernetes.io/hostname: kwok-$cluster-0
status:
  allocatable: {cpu: "32", memory: 256Gi, pods: "110"}
  capacity: {cpu: "32", memory: 256Gi, pods: "110"}
NODE

k apply --server-side -f /k8s/crds/
k wait --for=condition=Established --timeout=60s -f /k8s/crds/
for manifest in "$@"; do
    k apply -f "$manifest"
done
echo "setup $cluster: done"
