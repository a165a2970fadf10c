"""Tenants and their API keys (stored as SHA-256 hashes; the plain key is shown once)."""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from ..models import ApiKey, Tenant
from .clock import utcnow

KEY_PREFIX = "nern_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_or_create_tenant(session: Session, name: str) -> Tenant:
    tenant = session.scalar(select(Tenant).where(Tenant.name == name))
    if tenant is None:
        tenant = Tenant(name=name, created_at=utcnow())
        session.add(tenant)
        session.flush()
    return tenant


def create_key(session: Session, tenant_name: str) -> tuple[str, ApiKey]:
    """Create an API key for a tenant (created if new). Returns the plain key, shown only once."""
    tenant = get_or_create_tenant(session, tenant_name)
    plain = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(tenant_id=tenant.id, key_hash=hash_key(plain), prefix=plain[:12], created_at=utcnow())
    session.add(key)
    session.flush()
    return plain, key


def revoke_key(session: Session, key_or_prefix: str) -> int:
    """Revoke a key given in full or by its listed prefix; returns how many keys were revoked."""
    cond = ApiKey.key_hash == hash_key(key_or_prefix)
    if not key_or_prefix.startswith(KEY_PREFIX) or len(key_or_prefix) <= 12:
        cond = or_(cond, ApiKey.prefix == key_or_prefix)
    res = session.execute(
        update(ApiKey).where(cond, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return res.rowcount


def list_keys(session: Session) -> list[tuple[ApiKey, str]]:
    rows = session.execute(select(ApiKey, Tenant.name).join(Tenant).order_by(ApiKey.id)).all()
    return [(k, name) for k, name in rows]


def count_active_keys(session: Session) -> int:
    return session.scalar(select(func.count()).select_from(ApiKey).where(ApiKey.revoked_at.is_(None))) or 0


def tenant_for_key(session: Session, plain: str) -> int | None:
    return session.scalar(
        select(ApiKey.tenant_id).where(ApiKey.key_hash == hash_key(plain), ApiKey.revoked_at.is_(None))
    )
