"""Job ids and tenants' namespaces: `{id}` or `{tenant}.{id}`, and the rules that keep a
tenant's users inside their own namespace (pure functions of the contract)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentbus.contract import subjects
from agentbus.contract.messages import CancelRequest, HistoryQuery, JobSubmit

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]

tokens = st.from_regex(r"\A[A-Za-z0-9_-]{1,20}\Z")


@pytest.mark.parametrize(
    "job_id", ["j1", "acme.j1", "a-b_c.D-9", "x" * 128, "x" * 60 + "." + "y" * 67]
)
def test_a_job_id_is_one_token_or_a_tenant_and_one(job_id: str) -> None:
    assert subjects.check_job_id(job_id) == job_id
    JobSubmit(job_id=job_id, text="t")  # the message model takes the same ids


@pytest.mark.parametrize(
    "job_id",
    [
        "",
        "a.b.c",
        ".a",
        "a.",
        "a..b",
        "a b",
        "a.*",
        "a.>",
        "ü",
        "x" * 129,
        "x" * 64 + "." + "y" * 64,
    ],
)
def test_anything_else_is_refused_naming_the_field(job_id: str) -> None:
    with pytest.raises(ValueError, match="job_id"):
        subjects.check_job_id(job_id)
    with pytest.raises(ValueError, match="job_id"):
        JobSubmit(job_id=job_id, text="t")


def test_a_qualified_id_names_its_tenant_in_every_subject() -> None:
    assert subjects.job_id_tenant("acme.j1") == "acme"
    assert subjects.job_id_tenant("j1") is None
    assert subjects.job_state_subject("acme.j1") == "$KV.jobs.acme.j1"
    assert subjects.job_progress("acme.j1") == "progress.acme.j1"
    assert subjects.result_subject("acme.j1", "0-1") == "results.acme.j1.0-1"
    assert subjects.job_canceled("acme.j1") == "jobs.canceled.acme.j1"
    assert subjects.history_subject("acme.j1") == "rpc.history.acme"
    assert subjects.history_subject("j1") == "rpc.history"
    assert subjects.cancel_subject("acme.j1") == "jobs.cancel.acme"
    assert subjects.cancel_subject("j1") == "jobs.cancel"


@given(tenant=tokens, job=tokens)
def test_qualifying_is_idempotent_and_refuses_another_tenants_id(tenant: str, job: str) -> None:
    qualified = subjects.qualify_job_id(job, tenant)
    assert qualified == f"{tenant}.{job}"
    assert subjects.qualify_job_id(qualified, tenant) == qualified
    assert subjects.job_id_tenant(qualified) == tenant
    other = tenant + "x"
    with pytest.raises(ValueError, match=f"tenant {tenant}'s, not {other}'s"):
        subjects.qualify_job_id(qualified, other)


@given(tenant=tokens, other=tokens, job=tokens)
def test_a_tenants_job_must_be_in_its_namespace(tenant: str, other: str, job: str) -> None:
    on_subject = subjects.tenant_submit(tenant)
    assert subjects.job_id_refusal(f"{tenant}.{job}", subject=on_subject, claimed=None) is None
    assert subjects.job_id_refusal(f"{tenant}.{job}", subject=on_subject, claimed=other) is None
    refused = subjects.job_id_refusal(job, subject=on_subject, claimed=tenant)
    assert refused is not None and f"name it {tenant}.ID" in refused
    if other != tenant:
        assert subjects.job_id_refusal(f"{other}.{job}", subject=on_subject, claimed=None)
    # a trusted client on jobs.submit: a plain id, or one in the namespace it claims
    assert subjects.job_id_refusal(job, subject="jobs.submit", claimed=None) is None
    assert subjects.job_id_refusal(job, subject="jobs.submit", claimed=other) is None
    assert subjects.job_id_refusal(f"{other}.{job}", subject="jobs.submit", claimed=other) is None
    if other != tenant:
        refused = subjects.job_id_refusal(f"{other}.{job}", subject="jobs.submit", claimed=tenant)
        assert refused is not None and f"tenant {other}'s namespace" in refused
    assert subjects.job_id_refusal(f"{other}.{job}", subject="jobs.submit", claimed=None)


@given(tenant=tokens, other=tokens, job=tokens)
def test_a_request_as_a_tenant_touches_only_its_jobs(tenant: str, other: str, job: str) -> None:
    for base in (subjects.JOBS_CANCEL, subjects.RPC_HISTORY):
        as_tenant = f"{base}.{tenant}"
        assert subjects.tenant_request_refusal(as_tenant, f"{tenant}.{job}", base=base) is None
        refused = subjects.tenant_request_refusal(as_tenant, job, base=base)
        assert refused == f"job {job} is not tenant {tenant}'s (asked on {as_tenant})"
        if other != tenant:
            assert subjects.tenant_request_refusal(as_tenant, f"{other}.{job}", base=base)
        # the trusted form: any job (tenants' users may not publish there)
        assert subjects.tenant_request_refusal(base, f"{other}.{job}", base=base) is None
    CancelRequest(job_id=f"{tenant}.{job}")
    HistoryQuery(job_id=f"{tenant}.{job}")
