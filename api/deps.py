"""Typed dependencies for the routes: settings, DB session, the caller's tenant."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from .jobstore import crud
from .jobstore.db import get_sessionmaker, session_scope
from .jobstore.settings import Settings
from .problems import ProblemError


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def get_session(request: Request) -> AsyncIterator[Session]:
    # A Session opens no connection until first used, so creating it here is cheap; the sync
    # route that uses it runs in the thread pool.
    with get_sessionmaker(request.app.state.settings.database_url)() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


class KeyCache:
    """Checked API keys kept in memory for a few seconds, so job polling costs no key lookup.

    A revoked key stops working within `auth_cache_seconds`.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._entries: dict[str, tuple[int, float]] = {}

    def get(self, key_hash: str) -> int | None:
        hit = self._entries.get(key_hash)
        if hit is not None and hit[1] > time.monotonic():
            return hit[0]
        return None

    def put(self, key_hash: str, tenant_id: int) -> None:
        if self.ttl > 0:
            if len(self._entries) > 10_000:
                self._entries.clear()
            self._entries[key_hash] = (tenant_id, time.monotonic() + self.ttl)


def _unauthorized(detail: str) -> ProblemError:
    return ProblemError(401, detail, kind="unauthorized", headers={"WWW-Authenticate": "Bearer"})


async def get_tenant(request: Request) -> int:
    """The tenant id of the caller's API key (Bearer); 401 without a valid key."""
    state = request.app.state
    if not state.settings.auth:
        return state.default_tenant_id
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("missing API key: send 'Authorization: Bearer <key>'")
    key_hash = crud.hash_key(token)
    tenant_id = state.key_cache.get(key_hash)
    if tenant_id is None:
        tenant_id = await run_in_threadpool(_lookup_key, state.settings.database_url, token)
        if tenant_id is None:
            raise _unauthorized("invalid or revoked API key")
        state.key_cache.put(key_hash, tenant_id)
    return tenant_id


def _lookup_key(url: str, token: str) -> int | None:
    with session_scope(url) as session:
        return crud.tenant_for_key(session, token)


TenantDep = Annotated[int, Depends(get_tenant)]
