"""Changing the security policy in tests the way admins do: a weakening
waits for a second person, so a test that needs one (or puts back a stronger
policy it changed) has the second person approve it."""

from __future__ import annotations

from typing import Any

from tests.support import Api


def set_policy(sa: Api, policy: dict[str, Any], *approvers: Api) -> dict[str, Any]:
    """PUT ``policy`` as ``sa``; whatever part of it waits is approved by the
    first of ``approvers`` who may (another SA, or an MA where the appliance
    has one SA: which one may depends on who else the session's tests made).
    Returns the policy then in force."""
    r = sa.put("/policy", {"policy": policy})
    assert r.status == 200, (r.status, r.body[:300])
    pending = r.json["pending"]
    if pending is None:
        return dict(r.json["policy"])
    refusals = []
    for approver in approvers:
        approved = approver.post(f"/policy/changes/{pending['id']}/approve", {})
        if approved.status == 200:
            return dict(approved.json["policy"])
        refusals.append((approver.username, approved.status, approved.body[:200]))
    raise AssertionError(f"nobody could approve the policy change: {refusals}")
