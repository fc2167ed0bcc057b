"""The two Gslb CRDs (k8gb's old and new API group) must stay one schema."""

from __future__ import annotations

from pathlib import Path

import yaml

CRDS = Path(__file__).resolve().parents[2] / "k8s" / "crds"


def test_both_groups_serve_the_same_schema() -> None:
    old = yaml.safe_load((CRDS / "gslb.k8gb.absa.oss.yaml").read_text())
    new = yaml.safe_load((CRDS / "gslb.k8gb.io.yaml").read_text())
    assert (old["spec"]["group"], new["spec"]["group"]) == ("k8gb.absa.oss", "k8gb.io")
    assert old["spec"]["versions"] == new["spec"]["versions"]
    assert old["spec"]["names"] == new["spec"]["names"]
    columns = {c["name"]: c for c in old["spec"]["versions"][0]["additionalPrinterColumns"]}
    assert columns["strategy"]["jsonPath"] == ".spec.strategy.type"
    assert columns["geoTag"]["jsonPath"] == ".status.geoTag"
    assert columns["hosts"]["priority"] == 1
