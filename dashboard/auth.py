"""Who may do what on the dashboard: bearer tokens with a role, and browser sessions.

Roles: ``admin`` (reads and actions) and ``read-only`` (reads). Tokens come
from `--token-file` / ``SERVAL_DASHBOARD_TOKENS_FILE`` (lines ``name:role:token``,
``#`` comments) and ``SERVAL_DASHBOARD_ADMIN_TOKEN`` (name ``admin``). With
`open_reads` the read endpoints need no credential; actions always need admin.

Browser sessions: ``POST /login`` with a token creates a random session id
(an ``HttpOnly; SameSite=Strict`` cookie) bound to the token's principal and a
CSRF token; every form repeats the CSRF token (synchroniser token), so a page
from another origin cannot act with the cookie. Sessions live in memory.
Pure except for `load_tokens` (reads a file) and `secrets`.
"""

from __future__ import annotations

import hmac
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path

ADMIN = "admin"
READ_ONLY = "read-only"
ROLES = (ADMIN, READ_ONLY)


@dataclass(frozen=True, slots=True)
class Principal:
    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == ADMIN


@dataclass(frozen=True, slots=True)
class Session:
    principal: Principal
    csrf: str


@dataclass
class Auth:
    """The token table and the live browser sessions."""

    tokens: dict[str, Principal] = field(default_factory=dict)
    open_reads: bool = False
    sessions: dict[str, Session] = field(default_factory=dict)

    def principal(self, token: str) -> Principal | None:
        """The principal of `token` (compared in constant time), or None."""
        found = None
        for known, who in self.tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                found = who
        return found

    def login(self, token: str) -> tuple[str, Session] | None:
        who = self.principal(token)
        if who is None:
            return None
        sid = secrets.token_urlsafe(32)
        session = Session(who, secrets.token_urlsafe(24))
        self.sessions[sid] = session
        return sid, session

    def logout(self, sid: str) -> None:
        self.sessions.pop(sid, None)


def parse_tokens(text: str) -> dict[str, Principal]:
    """Lines ``name:role:token``; raise ValueError on a malformed line or unknown role."""
    out: dict[str, Principal] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split(":", 2)
        if len(parts) != 3 or not all(parts) or parts[1] not in ROLES:
            raise ValueError(f"token file line {n}: expected name:role:token with role in {ROLES}")
        name, role, token = parts
        if len(token) < 16:
            raise ValueError(f"token file line {n}: token shorter than 16 characters")
        out[token] = Principal(name, role)
    return out


def load_tokens(path: Path | None) -> dict[str, Principal]:
    """Tokens from `path` (or ``SERVAL_DASHBOARD_TOKENS_FILE``) and ``SERVAL_DASHBOARD_ADMIN_TOKEN``."""
    tokens: dict[str, Principal] = {}
    file = path or (Path(p) if (p := os.environ.get("SERVAL_DASHBOARD_TOKENS_FILE")) else None)
    if file is not None:
        tokens.update(parse_tokens(file.read_text()))
    admin = os.environ.get("SERVAL_DASHBOARD_ADMIN_TOKEN", "")
    if admin:
        tokens[admin] = Principal("admin", ADMIN)
    return tokens


def write_admin_token(path: Path) -> str:
    """Create `path` (mode 0600) holding a fresh ``admin:admin:<token>`` line; return the token."""
    token = secrets.token_urlsafe(32)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"admin:{ADMIN}:{token}\n")
    os.chmod(path, 0o600)
    return token
