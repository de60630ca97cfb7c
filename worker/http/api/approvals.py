"""``GET /api/approvals``: the approvals (pending ones by default), with the JSON shape the CLI's ``approvals --json``
shares. Deciding one is an action of the seed endpoint (``approve`` / ``decline``, worker.http.api.actions); a Slack
click comes in through worker.http.slack."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from worker.db.reads import Approval, Reads
from worker.http import auth
from worker.http.api.wire import ok, parse_query
from worker.http.app import CTX
from worker.http.models import ApprovalsQuery


def approval_json(a: Approval) -> dict[str, Any]:
    """One approval as the API, the CLI's --json and the dashboard show it."""
    return {
        "approvalId": str(a.id),
        "experimentName": a.experiment_name,
        "kind": a.kind,
        "status": a.status,
        "requestedAt": a.requested_at,
        "requestedBy": a.requested_by,
        "expiresAt": a.expires_at,
        "variant": a.variant,
        "step": a.step,
        "decision": a.decision,
        "decidedAt": a.decided_at,
        "decidedBy": a.decided_by,
        "reason": a.reason,
        "expired": a.expired,
        "promotionId": a.promotion_id,
    }


async def list_approvals(request: web.Request) -> web.Response:
    """Approvals, newest first: pending ones by default (``status``), optional ``experiment``, paginated."""
    ctx = request.app[CTX]
    await auth.require_role(request, "viewer")
    query = parse_query(request, ApprovalsQuery)
    status = None if query.status == "all" else query.status
    items, total = await Reads(ctx.pool).approvals_page(status, query.experiment, query.limit, query.offset)
    return ok(
        {
            "approvals": [approval_json(a) for a in items],
            "total": total,
            "limit": query.limit,
            "offset": query.offset,
        }
    )
