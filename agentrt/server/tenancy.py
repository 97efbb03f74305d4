"""API keys, tenants, and the cache salt of each request.

A prefix-cache hit is fast, so a client that can share another's cache can probe for the other's
prompts by timing its own (or by reading `usage.prompt_tokens_details.cached_tokens`). A cache salt
closes that: the engine roots a salted request's block-hash chain at its salt, so it shares
blocks only with requests of the same salt (agentrt.engine.request.RequestMeta).

* No key, or one key: one tenant. A body's `cache_salt` (as vLLM accepts it) is the request's
  salt, as is: clients that send the same salt share a cache, others do not.
* Several keys (`--api-key` repeated: each key is a tenant of its own; or `{key: tenant}` given to
  `create_app`, where keys of one tenant share its cache): every request is salted with its
  tenant, together with its body's `cache_salt` when there is one, so no body salt reaches into
  another tenant's cache, and program ids are the tenant's own (`program_key`): one tenant can
  neither see, end nor join another's program of the same id.

Salted requests use the device and host tiers, never the disk tier (see agentrt.engine.disk_link).
Keys are kept as SHA-256 digests and looked up by digest.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence

from agentrt.server.errors import APIError
from agentrt.server.programs import ProgramIds

Keys = str | Sequence[str] | Mapping[str, str] | None
DEFAULT_TENANT = "default"


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def key_tenants(keys: Keys) -> dict[str, str]:
    """{key: tenant} of an api_key option: one key, several (each its own tenant) or a mapping."""
    if keys is None:
        return {}
    if isinstance(keys, str):
        mapping = {keys: DEFAULT_TENANT}
    elif isinstance(keys, Mapping):
        mapping = dict(keys)
    else:
        mapping = {k: "key:" + _digest(k).hex()[:32] for k in keys}
    for key, tenant in mapping.items():
        if not isinstance(key, str) or not key:
            raise ValueError("an API key must be a non-empty string")
        if not isinstance(tenant, str) or not tenant:
            raise ValueError(f"the tenant of an API key must be a non-empty string, not {tenant!r}")
    return mapping


class Tenancy:
    """Who may call (`authenticate`) and which cache a request may share (`cache_salt`)."""

    def __init__(self, keys: Keys = None):
        mapping = key_tenants(keys)
        self._tenants = {_digest(k): t for k, t in mapping.items()}
        self.isolated = len(set(mapping.values())) > 1     # tenants' caches kept apart by salt

    @property
    def required(self) -> bool:
        return bool(self._tenants)

    def authenticate(self, given: str | None) -> str | None:
        """The caller's tenant (None when no key is required), or a 401."""
        if not self._tenants:
            return None
        if not given:
            raise APIError(401, "missing API key: send 'Authorization: Bearer KEY'", code="missing_api_key")
        tenant = self._tenants.get(_digest(given))
        if tenant is None:
            raise APIError(401, "incorrect API key", code="invalid_api_key")
        return tenant

    def cache_salt(self, tenant: str | None, body_salt: str | None) -> str | None:
        """The request's salt: its tenant's (with several tenants) and its body's, or the body's."""
        if not self.isolated or tenant is None:
            return body_salt
        return json.dumps([tenant, body_salt], separators=(",", ":"))

    def program_key(self, tenant: str | None, program_id: str) -> str:
        """The tracker's id of a client's program: the id as sent, or (with several tenants) the
        id within the caller's tenant, so that tenants' programs of the same id are two programs."""
        if not self.isolated or tenant is None:
            return program_id
        return json.dumps([tenant, program_id], separators=(",", ":"))

    def scope(self, tenant: str | None, ids: ProgramIds) -> ProgramIds:
        """A request's program fields with its program id made the tenant's (see `program_key`)."""
        if ids.program_id is None:
            return ids
        return ids._replace(program_id=self.program_key(tenant, ids.program_id))
