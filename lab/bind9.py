"""BIND9 as the enterprise ("edge") DNS: authoritative for a zone, RFC 2136 updates signed with TSIG.

With `recursive=True` it also resolves for loopback clients, following delegations to other loopback
servers on port 53. There is no network beyond loopback, so the root hints point at an unused loopback
address: nothing ever leaves the machine. Names inside its own zone that are delegated away (the GSLB
zone) are resolved by following the delegation's NS + glue, because the delegation is a zone cut.

named only listens on addresses an interface has (it scans the interfaces; there is no "bind anyway"
option), while the kernel routes all of 127.0.0.0/8 to `lo`. A server that must sit on port 53 of its
own loopback address (a root server, an edge reached through glue) gets that address added to `lo` for
its lifetime (`LoopbackAddress`, needs root). `zone_text` replaces the generated zone file, and zone "."
makes a root server (no hints then).
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import dns.message
import dns.query
import dns.rcode
import dns.tsigkeyring

from lab.proc import Process, Server, StartupError, binary, free_port, wait_for

START_TIMEOUT = 30.0
NOWHERE = "127.255.255.254"  # root hints target: loopback, nobody listens


class LoopbackAddress:
    """`ip addr add <host>/32 dev lo` until stop(), so named can listen there (root only).

    An address that is already on `lo` (another run's, or the host's own) is used and left alone;
    one we added is removed again. A killed run leaves at most a /32 on `lo`, which routes exactly
    as before (the kernel already delivers all of 127.0.0.0/8 locally).
    """

    def __init__(self, host: str) -> None:
        if not host.startswith("127.") or host == "127.0.0.1":
            raise ValueError(f"{host}: only extra 127.x.y.z addresses are added to lo")
        self.host = host
        self.added = False

    def _ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        run = subprocess.run([binary("ip"), *args], capture_output=True, text=True, timeout=10)
        if check and run.returncode:
            raise StartupError(f"ip {' '.join(args)}: {run.stderr.strip()} (needs root: CAP_NET_ADMIN)")
        return run

    def present(self) -> bool:
        return f" {self.host}/" in self._ip("-4", "addr", "show", "dev", "lo").stdout

    def start(self) -> LoopbackAddress:
        if not self.present():
            self._ip("addr", "add", f"{self.host}/32", "dev", "lo")
            self.added = True
        return self

    def stop(self) -> None:
        if self.added:
            self._ip("addr", "del", f"{self.host}/32", "dev", "lo", check=False)
            self.added = False


class Bind9(Server):
    """named -g as the edge DNS. `key_file` is a BIND key file (what --tsig-key-file expects)."""

    def __init__(
        self,
        workdir: Path,
        zone: str = "foowidgets.k8s",
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        recursive: bool = False,
        zone_text: str | None = None,
        key_name: str | None = None,
        algorithm: str = "hmac-sha256",
        detached: bool = False,
        name: str = "named",
    ) -> None:
        self.workdir = workdir
        self.zone = zone.rstrip(".") or "."
        self.host = host
        self.port = port or free_port(host)
        self.recursive = recursive
        self.zone_text = zone_text
        label = self.zone.strip(".") or "root"
        self.key_name = key_name or f"{label}-update"
        self.algorithm = algorithm
        self.key_file = workdir / f"{name}.tsig.key"
        self.secret = ""
        self.conf = workdir / f"{name}.conf"
        self.zone_file = workdir / f"{label}.db"
        self.process = Process(
            name,
            [binary("named"), "-g", "-n", "1", "-c", self.conf],
            workdir / f"{name}.log",
            cwd=workdir,
            detached=detached,
        )

    def keyring(self) -> dict[dns.name.Name, dns.tsig.Key]:
        """The TSIG key for dnspython: UpdateMessage(zone, keyring=..., keyalgorithm=...)."""
        return dns.tsigkeyring.from_text({self.key_name: (self.algorithm, self.secret)})

    def start(self) -> Bind9:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self._write_files()
        self.process.start()

        def soa() -> bool:
            reply = dns.query.udp(
                dns.message.make_query(self.zone, "SOA"), self.host, port=self.port, timeout=1
            )
            return reply.rcode() == dns.rcode.NOERROR and bool(reply.answer)

        wait_for(
            soa,
            what=f"named serving {self.zone} on {self.address}",
            timeout=START_TIMEOUT,
            watch=[self.process],
        )
        return self

    def _write_files(self) -> None:
        if not self.key_file.exists():
            run = subprocess.run(
                [binary("tsig-keygen"), "-a", self.algorithm, self.key_name],
                capture_output=True,
                text=True,
                timeout=30,
            )
            if run.returncode:
                raise StartupError(f"tsig-keygen failed: {run.stderr}")
            self.key_file.write_text(run.stdout)
            self.key_file.chmod(0o600)
        found = re.search(r'secret "([^"]+)"', self.key_file.read_text())
        if not found:
            raise StartupError(f"no secret in {self.key_file}")
        self.secret = found.group(1)
        if self.zone_text is not None:
            self.zone_file.write_text(self.zone_text)
        elif not self.zone_file.exists():
            z = self.zone
            self.zone_file.write_text(
                f"$TTL 300\n@ IN SOA ns1.{z}. hostmaster.{z}. 1 3600 600 86400 30\n"
                f"@ IN NS ns1.{z}.\nns1 IN A {self.host}\n"
            )
        hints = self.workdir / "root.hints"
        hints.write_text(f". 3600000 NS nowhere.invalid.\nnowhere.invalid. 3600000 A {NOWHERE}\n")
        wd = self.workdir
        recursion = (
            "recursion yes;\n    allow-recursion { 127.0.0.0/8; };\n    allow-query-cache { 127.0.0.0/8; };"
            if self.recursive
            else "recursion no;"
        )
        hint = "" if self.zone == "." else f'zone "." {{ type hint; file "{hints}"; }};'
        self.conf.write_text(f"""include "{self.key_file}";
options {{
    directory "{wd}";
    pid-file none;
    session-keyfile "{wd}/session.key";
    managed-keys-directory "{wd}";
    listen-on port {self.port} {{ {self.host}; }};
    listen-on-v6 {{ none; }};
    {recursion}
    dnssec-validation no;
    notify no;
    empty-zones-enable no;
}};
controls {{ }};
{hint}
zone "{self.zone}" {{
    type primary;
    file "{self.zone_file}";
    allow-update {{ key "{self.key_name}"; }};
}};
""")
