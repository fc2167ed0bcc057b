"""The TSIG key that signs edge updates, from a BIND key file or a Kubernetes Secret.

Never from a flag: a flag value shows in `ps`, in the Pod spec and in shell history.
"""

from __future__ import annotations

import base64
import re
from pathlib import Path

import dns.name
import dns.tsig

from backend.config import Settings

_KEY_RE = re.compile(r'key\s+"?([^"\s{]+)"?\s*\{(.*?)\}\s*;', re.S)
_FIELD_RE = re.compile(r'(algorithm|secret)\s+"?([^";\s]+)"?\s*;')


class TsigKeyError(ValueError):
    """The key source is missing or unreadable; the text says which source and why."""


def parse_key_file(text: str) -> dns.tsig.Key:
    """The first `key "name" { algorithm ...; secret "..."; };` block, as tsig-keygen writes it."""
    block = _KEY_RE.search(text)
    if not block:
        raise TsigKeyError('no `key "name" { ... };` block found')
    fields = dict(_FIELD_RE.findall(block.group(2)))
    if "secret" not in fields:
        raise TsigKeyError(f"key {block.group(1)} has no secret")
    return _key(block.group(1), fields["secret"], fields.get("algorithm", "hmac-sha256"))


def _key(name: str, secret: str, algorithm: str) -> dns.tsig.Key:
    try:
        base64.b64decode(secret, validate=True)
        return dns.tsig.Key(name, secret, dns.name.from_text(algorithm.strip().lower()))
    except Exception as e:
        raise TsigKeyError(f"key {name}: {type(e).__name__}: {e}") from e


def from_secret(data: dict[str, str], ref: str) -> dns.tsig.Key:
    """A Secret's `data` (base64 values, as the API returns them) with keys name, secret, algorithm."""
    try:
        fields = {k: base64.b64decode(v).decode().strip() for k, v in data.items()}
    except Exception as e:
        raise TsigKeyError(f"Secret {ref}: undecodable data: {e}") from e
    missing = [k for k in ("name", "secret") if not fields.get(k)]
    if missing:
        raise TsigKeyError(f"Secret {ref} lacks {', '.join(missing)}")
    return _key(fields["name"], fields["secret"], fields.get("algorithm") or "hmac-sha256")


def _read_secret(settings: Settings, ref: str) -> dict[str, str]:
    import kubernetes.client
    import kubernetes.config

    namespace, _, name = ref.partition("/")
    if not name:
        namespace, name = settings.namespace, namespace
    if settings.kubeconfig:
        api_client = kubernetes.config.new_client_from_config(config_file=settings.kubeconfig)
    else:
        kubernetes.config.load_incluster_config()
        api_client = kubernetes.client.ApiClient()
    with api_client:
        secret = kubernetes.client.CoreV1Api(api_client).read_namespaced_secret(name, namespace)
    return dict(secret.data or {})


def load(settings: Settings) -> dns.tsig.Key | None:
    """The configured key; None when neither a file nor a Secret is set (updates go unsigned)."""
    if settings.tsig_key_file:
        try:
            text = Path(settings.tsig_key_file).read_text()
        except OSError as e:
            raise TsigKeyError(f"TSIG key file {settings.tsig_key_file}: {e.strerror}") from e
        try:
            return parse_key_file(text)
        except TsigKeyError as e:
            raise TsigKeyError(f"TSIG key file {settings.tsig_key_file}: {e}") from e
    if settings.tsig_secret:
        try:
            data = _read_secret(settings, settings.tsig_secret)
        except Exception as e:
            raise TsigKeyError(f"Secret {settings.tsig_secret}: {type(e).__name__}: {e}") from e
        return from_secret(data, settings.tsig_secret)
    return None
