"""JWT keys, principals, and who a request is.

Rules: keys live in a server-side ring `{kid: Key(alg, key, purpose)}`; the
algorithm used to verify is the key's own, never read from the token; `exp`,
`iat` and `sub` are required (pyjwt would accept a token without `exp`); the
role claim is `admin` or `user`. Key files are created once in the data
directory with mode 0600 and reused. Tokens are never logged. Every token
check of every dialect and of the REST API lives here, never in a dialect:
`verify(token, purpose=...)` names the rules ("api": the server's own tokens).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt

from .core.ids import UserId
from .errors import Unauthenticated

ROLES = ("admin", "user")
LEEWAY_SECONDS = 10
DEFAULT_TTL = 24 * 3600
API_KEY_ID = "api-1"
SIGNING_KEY_FILE = "signing.key"  # in the data directory
MAX_TOKEN_LENGTH = 8192
# Tokens verified lately, remembered until they expire: a client sends the same
# token with every request, and checking its signature and claims again costs
# more than the rest of a small request's own work. Only valid tokens get in.
VERIFIED_CACHE_SIZE = 256


@dataclass(frozen=True, slots=True)
class Principal:
    sub: UserId
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True, slots=True)
class Key:
    alg: str
    key: bytes
    purpose: str


class KeyRing:
    def __init__(self, keys: dict[str, Key], *, default_kid: str) -> None:
        self._keys = dict(keys)
        self._default = default_kid
        # (token, purpose) -> (principal, exp); oldest first. The keys never
        # change, so a token valid once stays valid until its `exp`.
        self._verified: dict[tuple[str, str], tuple[Principal, float]] = {}

    @classmethod
    def load_or_create(cls, data_dir: Path) -> KeyRing:
        secret = read_or_create_secret(data_dir / SIGNING_KEY_FILE,
                                       lambda: secrets.token_bytes(32))
        return cls({API_KEY_ID: Key("HS256", secret, "api")}, default_kid=API_KEY_ID)

    def issue(self, sub: str, role: str, *, ttl: float = DEFAULT_TTL, now: float | None = None,
              extra: dict[str, Any] | None = None) -> str:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}")
        key = self._keys[self._default]
        issued = int(time.time() if now is None else now)
        claims: dict[str, Any] = {"sub": sub, "role": role, "iat": issued, "exp": issued + int(ttl)}
        if extra:
            claims.update(extra)
        return jwt.encode(claims, key.key, algorithm=key.alg, headers={"kid": self._default})

    def verify(self, token: str, *, purpose: str = "api") -> Principal:
        if not token or len(token) > MAX_TOKEN_LENGTH:
            raise Unauthenticated("missing or malformed token")
        known = self._verified.get((token, purpose))
        if known is not None:
            principal, expires = known
            if time.time() < expires + LEEWAY_SECONDS:
                return principal
            del self._verified[(token, purpose)]
        principal, expires = self._verify(token, purpose)
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            del self._verified[next(iter(self._verified))]
        self._verified[(token, purpose)] = (principal, expires)
        return principal

    def _verify(self, token: str, purpose: str) -> tuple[Principal, float]:
        try:
            header = jwt.get_unverified_header(token)
            kid = header.get("kid", self._default)
            key = self._keys.get(kid) if isinstance(kid, str) else None
            if key is None or key.purpose != purpose:
                raise Unauthenticated("token signed with an unknown key")
            claims = jwt.decode(
                token,
                key.key,
                algorithms=[key.alg],
                options={"require": ["exp", "iat", "sub"]},
                leeway=LEEWAY_SECONDS,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired", code="token_expired") from None
        except jwt.PyJWTError:
            raise Unauthenticated("invalid token") from None
        sub, role = claims.get("sub"), claims.get("role", "user")
        if not isinstance(sub, str) or not sub or role not in ROLES:
            raise Unauthenticated("invalid token claims")
        return Principal(UserId(sub), role), int(claims["exp"])  # as pyjwt reads it


def bearer(header: str) -> str | None:
    """The token of an `Authorization: Bearer ...` header, else None."""
    scheme, _, token = header.partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def is_loopback(addr: str | None) -> bool:
    try:
        return addr is not None and ipaddress.ip_address(addr.split("%")[0]).is_loopback
    except ValueError:
        return False


def anonymous(*, enabled: bool, user: str, peer: str | None) -> Principal | None:
    """The principal of a request that sent no token: with `anonymous_loopback`
    on (`enabled`), a loopback peer acts as `user`; otherwise nobody."""
    if enabled and is_loopback(peer):
        return Principal(UserId(user), "user")
    return None


def authorize(keyring: KeyRing, *, bearer: str | None, query_token: str | None,
              anonymous_user: Principal | None = None) -> Principal:
    """Who is asking: the Bearer header, else `?token=` (EventSource cannot send
    headers), else `anonymous_user` (see `anonymous`)."""
    token = bearer if bearer is not None else query_token
    if token is None:
        if anonymous_user is not None:
            return anonymous_user
        raise Unauthenticated("missing bearer token", code="missing_token")
    return keyring.verify(token)


def read_or_create_secret(path: Path, make: Any) -> bytes:
    """The file's bytes; created 0600 with `make()` when it doesn't exist yet."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    data: bytes = make()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    return data
