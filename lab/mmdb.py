"""Small MaxMind DBs for the tests and the lab (`backend/gslb/geoip.py` reads them; mmdb-writer is a dev
dependency)."""

from __future__ import annotations

import os
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet


def write_db(path: str, networks: dict[str, dict[str, Any]]) -> None:
    """Write a small mmdb ({"127.0.0.0/24": {"datacenter": "us-buf"}, ...}) for tests and the lab."""
    writer = MMDBWriter(ip_version=6, ipv4_compatible=True, database_type="coredns-gslb-test")
    for network, record in networks.items():
        writer.insert_network(IPSet([network]), record)
    tmp = f"{path}.tmp"
    writer.to_db_file(tmp)
    os.replace(tmp, path)  # atomic, so a reader never sees half a file
