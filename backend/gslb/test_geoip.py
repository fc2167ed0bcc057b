"""The mmdb lookup: field selection, reload on change, a broken file never breaks answers."""

from __future__ import annotations

import os
from pathlib import Path

from backend.gslb.geoip import GeoIP
from lab.mmdb import write_db


def test_lookup_reload_and_broken_file(tmp_path: Path) -> None:
    db = str(tmp_path / "geo.mmdb")
    write_db(db, {"10.1.0.0/16": {"datacenter": "us-buf", "site": {"dc": "b"}},
                  "2001:db8::/32": {"datacenter": "eu"}})
    geo = GeoIP(db, check_interval=0)
    assert geo("10.1.2.3") == "us-buf"
    assert geo("2001:db8::1") == "eu"
    assert geo("192.0.2.1") is None
    assert GeoIP(db, field="site.dc")("10.1.2.3") == "b"

    write_db(db, {"10.1.0.0/16": {"datacenter": "us-nyc"}})
    os.utime(db, ns=(1, 1))  # a different mtime even within the same clock tick
    assert geo("10.1.2.3") == "us-nyc"

    Path(db).write_bytes(b"not an mmdb")
    assert geo("10.1.2.3") == "us-nyc"  # the last good DB stays
    os.remove(db)
    assert geo("10.1.2.3") == "us-nyc"


def test_missing_file_answers_none_until_it_appears(tmp_path: Path) -> None:
    db = str(tmp_path / "later.mmdb")
    geo = GeoIP(db, check_interval=0)
    assert geo("10.1.2.3") is None
    write_db(db, {"10.1.0.0/16": {"datacenter": "us-buf"}})
    assert geo("10.1.2.3") == "us-buf"
