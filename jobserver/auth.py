"""JWT keys, principals, and who a request is.

Rules: keys live in a server-side ring `{kid: Key(alg, key, purpose)}`; the
algorithm used to verify is the key's own, never read from the token; `exp`,
`iat` and `sub` are required (pyjwt would accept a token without `exp`); the
role claim is `admin` or `user`. Key files are created once in the data
directory with mode 0600 and reused. Tokens are never logged. Every token
check of every dialect and of the REST API lives here, never in a dialect:
`verify(token, purpose=...)` names the rules (`RULES`): "api" is the server's
own tokens (HS256); "progress" the live dialect's per-job tokens (RS256, `sub`
= the job's id, `aud` "oseh-job-progress", `iss` "oseh", exp and iat
required), whose principal may watch that one job and nothing else. A token
without a `kid` is checked against the purpose's own key. The RSA key pair is
made on first use (generating one costs CPU), or given as a PEM private key
(`OSEH_PROGRESS_JWT_SECRET`, or the `progress_key_file` setting).
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import shlex
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from .config import Config
from .core.ids import JobId, UserId
from .errors import Unauthenticated

ROLES = ("admin", "user")
LEEWAY_SECONDS = 10
DEFAULT_TTL = 24 * 3600
API_KEY_ID = "api-1"
SIGNING_KEY_FILE = "signing.key"  # in the data directory
PROGRESS_KEY_ID = "progress-1"
PROGRESS_KEY_FILE = "progress.key"
PROGRESS_AUDIENCE = "oseh-job-progress"
PROGRESS_ISSUER = "oseh"


def token_command_line(data_dir: str | Path) -> str:
    """The command, run on this machine, that makes an admin token for the server
    of `data_dir`: what the server prints at start and the page shows. It holds
    no secret (the key stays in the data directory; only its reader can sign)."""
    return shlex.join([sys.executable, "-m", "jobserver", "token", "--sub", "admin",
                       "--role", "admin", "--data-dir", str(Path(data_dir).resolve())])
RSA_KEY_BITS = 2048
MAX_TOKEN_LENGTH = 8192
# Tokens verified lately, remembered until they expire: a client sends the same
# token with every request, and checking its signature and claims again costs
# more than the rest of a small request's own work. Only valid tokens get in.
VERIFIED_CACHE_SIZE = 256


@dataclass(frozen=True, slots=True)
class Principal:
    sub: UserId
    role: str
    # Set for a progress token: the one job it may watch (its `sub`), nothing else.
    job: JobId | None = None

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


@dataclass(frozen=True, slots=True)
class Key:
    alg: str
    key: Any  # the signing key: bytes (HS256), an RSA private key object (RS256)
    purpose: str
    verify_key: Any = None  # the verifying key when it is not `key` (RSA: the public one)


@dataclass(frozen=True, slots=True)
class Rules:
    """What the tokens of one purpose must carry beyond a valid signature by one of
    the purpose's keys."""

    require: tuple[str, ...] = ("exp", "iat", "sub")
    audience: str | None = None
    issuer: str | None = None
    job_scoped: bool = False  # `sub` is a job's id: the principal may watch only it


RULES: dict[str, Rules] = {
    "api": Rules(),
    "progress": Rules(require=("exp", "iat", "sub", "aud", "iss"), audience=PROGRESS_AUDIENCE,
                      issuer=PROGRESS_ISSUER, job_scoped=True),
}

# A key made on first use: (its purpose, how to make it).
LazyKey = tuple[str, Callable[[], Key]]


class KeyRing:
    def __init__(self, keys: dict[str, Key], *, default_kid: str,
                 lazy: Mapping[str, LazyKey] | None = None) -> None:
        self._keys = dict(keys)
        self._lazy = dict(lazy or {})
        self._default = default_kid
        # purpose -> the kid of the key a token without a `kid` is checked against
        self._purpose_kid = {key.purpose: kid for kid, key in reversed(self._keys.items())}
        self._purpose_kid.update({purpose: kid for kid, (purpose, _) in self._lazy.items()})
        # (token, purpose) -> (principal, exp); oldest first. The keys never
        # change, so a token valid once stays valid until its `exp`.
        self._verified: dict[tuple[str, str], tuple[Principal, float]] = {}

    @classmethod
    def load_or_create(cls, data_dir: Path, *, progress_pem: str | None = None,
                       progress_key_file: Path | None = None) -> KeyRing:
        """The data directory's keys: the API secret (made now if missing) and the
        progress key pair, from `progress_pem` (checked now), else the file
        (`progress_key_file`, default `progress.key` in the data directory), made
        the first time a progress token is issued or checked."""
        secret = read_or_create_secret(data_dir / SIGNING_KEY_FILE,
                                       lambda: secrets.token_bytes(32))
        keys = {API_KEY_ID: Key("HS256", secret, "api")}
        lazy: dict[str, LazyKey] = {}
        if progress_pem is not None:
            keys[PROGRESS_KEY_ID] = progress_key(progress_pem)
        else:
            path = progress_key_file or data_dir / PROGRESS_KEY_FILE
            lazy[PROGRESS_KEY_ID] = ("progress", lambda: progress_key(
                read_or_create_secret(path, new_rsa_pem)))
        return cls(keys, default_kid=API_KEY_ID, lazy=lazy)

    @classmethod
    def for_config(cls, config: Config) -> KeyRing:
        """`load_or_create` with the config's progress key settings."""
        return cls.load_or_create(config.data_dir, progress_pem=config.progress_jwt_secret,
                                  progress_key_file=config.progress_key_file)

    def _key(self, kid: str) -> Key | None:
        key = self._keys.get(kid)
        if key is None and kid in self._lazy:
            key = self._keys[kid] = self._lazy.pop(kid)[1]()
        return key

    def issue_progress(self, job_id: str, *, ttl: float, now: float | None = None
                       ) -> tuple[str, int]:
        """A progress token for one job, and its `exp`. RS256 signatures are
        deterministic: the same job and `now` give the same token (the live
        dialect's renderer relies on it)."""
        kid = self._purpose_kid["progress"]
        key = self._key(kid)
        assert key is not None
        issued = int(time.time() if now is None else now)
        expires = issued + int(ttl)
        claims = {"sub": job_id, "aud": PROGRESS_AUDIENCE, "iss": PROGRESS_ISSUER,
                  "iat": issued, "exp": expires}
        return jwt.encode(claims, key.key, algorithm=key.alg, headers={"kid": kid}), expires

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
        rules = RULES.get(purpose, Rules())  # a purpose without rules has no keys either
        try:
            header = jwt.get_unverified_header(token)
            kid = header.get("kid", self._purpose_kid.get(purpose))
            key = self._key(kid) if isinstance(kid, str) else None
            if key is None or key.purpose != purpose:
                raise Unauthenticated("token signed with an unknown key")
            claims = jwt.decode(
                token,
                key.key if key.verify_key is None else key.verify_key,
                algorithms=[key.alg],
                options={"require": list(rules.require)},
                audience=rules.audience,
                issuer=rules.issuer,
                leeway=LEEWAY_SECONDS,
            )
        except jwt.ExpiredSignatureError:
            raise Unauthenticated("token expired", code="token_expired") from None
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"token lacks the {exc.claim!r} claim") from None
        except jwt.InvalidAudienceError:
            raise Unauthenticated("token for another audience") from None
        except jwt.InvalidIssuerError:
            raise Unauthenticated("token from another issuer") from None
        except jwt.InvalidSignatureError:
            raise Unauthenticated("bad token signature") from None
        except jwt.InvalidAlgorithmError:
            raise Unauthenticated("token signed with another algorithm") from None
        except jwt.PyJWTError:
            raise Unauthenticated("invalid token") from None
        sub, role = claims.get("sub"), claims.get("role", "user")
        if not isinstance(sub, str) or not sub:
            raise Unauthenticated("invalid token claims")
        if rules.job_scoped:
            return Principal(UserId(sub), "user", job=JobId(sub)), int(claims["exp"])
        if role not in ROLES:
            raise Unauthenticated("invalid token claims")
        return Principal(UserId(sub), role), int(claims["exp"])  # as pyjwt reads it


def progress_signer(keyring: KeyRing, ttl: float) -> Callable[[str, float], str]:
    """`sign(job_id, now)`: a progress token for the job, issued at `now`."""
    def sign(job_id: str, now: float) -> str:
        return keyring.issue_progress(job_id, ttl=ttl, now=now)[0]
    return sign


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


def new_rsa_pem() -> bytes:
    """A fresh RSA private key, PEM (PKCS#8, unencrypted)."""
    private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    return private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())


def progress_key(pem: str | bytes) -> Key:
    """The progress key from a PEM RSA private key (PKCS#8 or PKCS#1); newlines may
    be written `\\n`, as environment variables often carry them. ValueError when
    it is not an RSA private key."""
    text = pem.decode("utf-8", "replace") if isinstance(pem, bytes) else pem
    text = text.strip()
    if "\n" not in text and "\\n" in text:
        text = text.replace("\\n", "\n")
    try:
        private = serialization.load_pem_private_key(text.encode(), password=None)
    except (ValueError, TypeError):
        raise ValueError("the progress key must be a PEM RSA private key") from None
    if not isinstance(private, rsa.RSAPrivateKey):
        raise ValueError("the progress key must be an RSA private key")
    return Key("RS256", private, "progress", verify_key=private.public_key())


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
