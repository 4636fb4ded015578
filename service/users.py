"""Console users: creating them, checking passwords (argon2), and what each role may do.

Lives here: password hashing and verification, one-time passwords, the role permission
table. Not here: the table itself (`engine.database.User`), sessions and CSRF
(`service.console.auth`). A password is never logged or stored in clear.
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass
from typing import Any, Literal

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from engine.audit import Record, append
from engine.database import ROLES, User, session_scope

__all__ = [
    "MIN_PASSWORD_LENGTH",
    "Permission",
    "UserError",
    "Viewer",
    "add_user",
    "can",
    "change_password",
    "check_password",
    "list_users",
    "reset_password",
    "short_password_message",
]

Permission = Literal[
    "view_reviews",
    "decide_reviews",
    "view_runs",
    "view_messages",
    "view_message_content",
    "preview_templates",
    "view_audit",
    "view_stats",
]

_PERMISSIONS: dict[str, frozenset[Permission]] = {
    "admin": frozenset(
        {
            "view_reviews",
            "view_runs",
            "view_messages",
            "view_message_content",
            "preview_templates",
            "view_audit",
            "view_stats",
        }
    ),
    "designer": frozenset(
        {"view_runs", "view_messages", "view_message_content", "preview_templates", "view_stats"}
    ),
    "ops": frozenset({"view_reviews", "decide_reviews", "view_runs", "view_messages"}),
    "supervisor": frozenset(
        {"view_reviews", "decide_reviews", "view_runs", "view_messages", "view_stats"}
    ),
    "auditor": frozenset(
        {
            "view_reviews",
            "view_runs",
            "view_messages",
            "view_message_content",
            "view_audit",
            "view_stats",
        }
    ),
}
"""Only ops and supervisors decide; admins manage users (from the CLI), they do not decide.
A captured message's subject and body hold the customer's real data (a send renders the
real profile and event): only admins, designers and auditors see them; ops and
supervisors see who got what, when, on which channel, and the recipient masked. Designers
and admins preview templates (the console's journeys pages) with values they type. The
journeys' numbers (`view_stats`: overview, journey pages) are for those who change or
answer for journeys: admins, designers, supervisors (CX leads) and auditors; ops work
the review queue and open single runs."""

MIN_PASSWORD_LENGTH = 10
MAX_PASSWORD_LENGTH = 200
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789._-@")

_hasher = PasswordHasher()


@functools.cache
def _dummy_hash() -> str:
    """Verifying an unknown name still costs one hash, so timing does not tell names apart.
    Made on first use, not on import: every `journeys` command imports this module."""
    return _hasher.hash(secrets.token_urlsafe(16))


class UserError(ValueError):
    """A user could not be created or changed; the message says why."""


@dataclass(frozen=True)
class Viewer:
    """The signed-in person as pages and endpoints see them."""

    id: int
    name: str
    role: str
    must_change_password: bool = False

    def can(self, permission: Permission) -> bool:
        return can(self.role, permission)


def can(role: str, permission: Permission) -> bool:
    """Whether ``role`` has ``permission``."""
    return permission in _PERMISSIONS.get(role, frozenset())


def _check_name(name: str) -> str:
    name = name.strip().lower()
    if not 1 <= len(name) <= 100 or not set(name) <= _NAME_CHARS:
        raise UserError(
            f"user name {name!r} must be 1-100 characters of a-z, 0-9, '.', '_', '-', '@'"
        )
    return name


def _check_role(role: str) -> str:
    if role not in ROLES:
        raise UserError(f"role {role!r} is not one of {', '.join(ROLES)}")
    return role


def short_password_message(length: int) -> str:
    """What a person who chose a password of ``length`` characters, too short, reads."""
    return (
        f"The new password is too short: it needs at least {MIN_PASSWORD_LENGTH} characters"
        f" (this one has {length})."
    )


def _check_new_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise UserError(short_password_message(len(password)))
    if len(password) > MAX_PASSWORD_LENGTH:
        raise UserError(
            f"The new password is too long: it may have at most {MAX_PASSWORD_LENGTH} characters."
        )


def _one_time_password() -> str:
    return secrets.token_urlsafe(12)


def _audit(session: Session, kind: str, name: str, actor: str, **details: Any) -> None:
    """A user change in the audit log, in its transaction (never a password or a hash)."""
    append(session, [Record(kind, f"user:{name}", actor, None, details, None)])


def add_user(db: Engine, *, name: str, role: str, actor: str = "cli") -> str:
    """Create ``name`` with ``role``; returns its one-time password (changed at first login)."""
    name, role = _check_name(name), _check_role(role)
    password = _one_time_password()
    with session_scope(db) as session:
        if session.exec(select(User).where(User.name == name)).first() is not None:
            raise UserError(f"user {name!r} exists already (use `journeys user reset {name}`)")
        session.add(User(name=name, role=role, password_hash=_hasher.hash(password)))
        session.flush()
        _audit(session, "user.added", name, actor, role=role)
    return password


def reset_password(db: Engine, *, name: str, actor: str = "cli") -> str:
    """A new one-time password for ``name``; signs them out everywhere."""
    name = _check_name(name)
    password = _one_time_password()
    with session_scope(db) as session:
        user = session.exec(select(User).where(User.name == name)).first()
        if user is None:
            raise UserError(f"no user {name!r}")
        user.password_hash = _hasher.hash(password)
        user.must_change_password = True
        user.session_version += 1
        session.add(user)
        session.flush()
        _audit(session, "user.password_reset", name, actor)
    return password


def list_users(db: Engine) -> list[User]:
    """Every user, by name."""
    with session_scope(db) as session:
        return list(session.exec(select(User).order_by(col(User.name))).all())


def check_password(db: Engine, *, name: str, password: str) -> User | None:
    """The enabled user ``name`` if ``password`` is theirs; None otherwise (never says which)."""
    if len(password) > MAX_PASSWORD_LENGTH:
        return None
    try:
        name = _check_name(name)
    except UserError:
        _verify(_dummy_hash(), password)
        return None
    with session_scope(db) as session:
        user = session.exec(select(User).where(User.name == name)).first()
        if user is None or user.disabled:
            _verify(_dummy_hash(), password)
            return None
        if not _verify(user.password_hash, password):
            return None
        if _hasher.check_needs_rehash(user.password_hash):
            user.password_hash = _hasher.hash(password)
            session.add(user)
        session.expunge(user)
        return user


def change_password(db: Engine, *, user_id: int, current: str, new: str) -> User:
    """Set a user's own password (after checking the current one); signs out other sessions."""
    _check_new_password(new)
    if current == new:
        raise UserError("the new password must differ from the current one")
    with session_scope(db) as session:
        user = session.get(User, user_id)
        if user is None or user.disabled:
            raise UserError("this account no longer exists")
        if not _verify(user.password_hash, current):
            raise UserError("the current password is wrong")
        user.password_hash = _hasher.hash(new)
        user.must_change_password = False
        user.session_version += 1
        session.add(user)
        session.flush()
        _audit(session, "user.password_changed", user.name, f"user:{user.name}")
        session.expunge(user)
        return user


def get_user(session: Session, user_id: int) -> User | None:
    """The user with ``user_id``, enabled or not."""
    return session.get(User, user_id)


def _verify(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False
