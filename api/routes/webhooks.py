"""`/webhooks`: a tenant's notification hooks and their delivery log (see api/notify.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Response
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..deps import SessionDep, SettingsDep, TenantDep
from ..jobstore import webhooks
from ..notify import WebhookUrlError, check_url
from ..problems import ProblemError

router = APIRouter(prefix="/webhooks", tags=["webhooks"])

EventName = Literal["job.succeeded", "job.failed", "job.cancelled"]


class WebhookCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    url: str = Field(max_length=2000, description="http(s) URL on a public address")
    events: list[EventName] = Field(min_length=1, description="events to receive")

    @field_validator("events")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        return list(dict.fromkeys(v))


class WebhookPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    url: str
    events: list[str]
    created_at: datetime


class WebhookCreated(WebhookPublic):
    secret: str = Field(description="HMAC-SHA256 key of X-Nern-Signature; shown only in this answer")


class WebhookList(BaseModel):
    items: list[WebhookPublic]


class DeliveryPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    event: str
    job_id: str
    status: str = Field(description="pending | delivered | failed")
    attempts: list[dict[str, Any]] = Field(description="each try: at, status_code, error, duration_ms")
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None


class DeliveryList(BaseModel):
    items: list[DeliveryPublic]


def _not_found(hook_id: str) -> ProblemError:
    return ProblemError(404, f"no webhook {hook_id!r}", kind="not-found")


@router.post("", status_code=201, response_model=WebhookCreated, summary="Subscribe a URL to job events")
def create_webhook(body: WebhookCreate, session: SessionDep, settings: SettingsDep, tenant_id: TenantDep) -> Response:
    try:
        check_url(body.url, settings.webhook_allow_private)
    except WebhookUrlError as e:
        raise ProblemError(422, f"url: {e}", kind="invalid-webhook-url") from None
    hook = webhooks.create_hook(session, tenant_id, body.url, body.events)
    session.commit()
    out = WebhookCreated(**WebhookPublic.model_validate(hook).model_dump(), secret=hook.secret)
    return Response(out.model_dump_json(), status_code=201, media_type="application/json",
                    headers={"Location": f"/webhooks/{hook.id}"})


@router.get("", response_model=WebhookList, summary="The tenant's webhooks (secrets are not shown)")
def list_webhooks(session: SessionDep, tenant_id: TenantDep) -> WebhookList:
    return WebhookList(items=[WebhookPublic.model_validate(h) for h in webhooks.list_hooks(session, tenant_id)])


@router.delete("/{hook_id}", status_code=204, summary="Delete a webhook (pending deliveries are dropped)")
def delete_webhook(hook_id: str, session: SessionDep, tenant_id: TenantDep) -> Response:
    if not webhooks.delete_hook(session, tenant_id, hook_id):
        session.rollback()
        raise _not_found(hook_id)
    session.commit()
    return Response(status_code=204)


@router.get("/{hook_id}/deliveries", response_model=DeliveryList, summary="Recent deliveries, newest first")
def list_deliveries(hook_id: str, session: SessionDep, tenant_id: TenantDep) -> DeliveryList:
    if webhooks.get_hook(session, tenant_id, hook_id) is None:
        raise _not_found(hook_id)
    return DeliveryList(items=[DeliveryPublic.model_validate(d) for d in webhooks.list_deliveries(session, hook_id)])
