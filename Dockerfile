# The coredns-gslb backend image: the sidecar next to CoreDNS in k8s/deployment.yaml and the backend
# service in docker-compose.yml. Build: docker build -t coredns-gslb:0.1.0 .
# Only what a cluster runs: the wheel leaves out the unit tests and the tests' gRPC stub (setup.py), and
# the lab (lab/) is not in the build context (tests/test_wheel.py).
FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/coredns-gslb
WORKDIR /src
COPY pyproject.toml setup.py ./
COPY proto/ proto/
COPY backend/ backend/
RUN /opt/coredns-gslb/bin/pip install . && rm -rf /src

FROM python:3.11.14-slim-bookworm
# Read-only root filesystem in Kubernetes: no .pyc writes, logs straight to stdout.
ENV PATH=/opt/coredns-gslb/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
COPY --from=build /opt/coredns-gslb /opt/coredns-gslb
# Numeric, so the kubelet can verify runAsNonRoot; the same uid as the CoreDNS image (distroless nonroot).
USER 65532:65532
# gRPC for CoreDNS's grpc plugin; HTTP for /healthz, /readyz, /metrics and /explain.
EXPOSE 8053 8080
ENTRYPOINT ["coredns-gslb"]
CMD ["serve"]
