"""The Python client (clients/python, installed from its wheel) against the real ledger and
Envoy, with the official SDKs: the admin API and its typed errors, per-run credentials
(sync and async) revoked on exit, on an exception and on a failed issue, the SDK helpers,
refusals read from SDK exceptions, and the LangChain tool integration.

Run by tests/e2e/python_client.rs with a clean environment:
  BRIDLE_LEDGER_URL, BRIDLE_ADMIN_KEY   the test's ledger
  BRIDLE_PROXY_<VENDOR>                 the test's Envoy listener of each vendor
  STRIPE_MERCHANT, TWILIO_SID           what the example policies allow
Prints one JSON object of observations; the Rust test asserts on it and on the ledger.
"""

import asyncio
import json
import os
import time

import anthropic
import openai
import stripe

import bridle
from bridle.integrations.langchain import bridle_tool

MERCHANT = os.environ["STRIPE_MERCHANT"]
SID = os.environ["TWILIO_SID"]
ADMIN = bridle.Client()
out = {"client_file": bridle.__file__, "version": bridle.__version__}


def err(e):
    return {
        "class": type(e).__name__,
        "code": getattr(e, "code", None),
        "status": getattr(e, "status", None),
        "str": str(e),
    }


def refused(fn):
    """Calls fn, which must raise; returns the SDK class and Bridle's refusal."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - whatever the SDK raises is the observation
        r = bridle.refusal(e)
        return {
            "class": f"{type(e).__module__.split('.')[0]}.{type(e).__name__}",
            "reason": r.reason.value if r else None,
            "status": r.status if r else None,
            "is_cap": r.reason.is_cap if r else None,
        }
    return {"class": None}


out["reasons"] = [[r.value, r.status] for r in bridle.Reason]

# --- the admin API ----------------------------------------------------------------------
t = ADMIN.issue("openai-chat", "py/admin/one", "10m", per_window="1.00")
out["issued"] = {
    "id": t.id,
    "repr": repr(t),
    "policy": t.policy,
    "label": t.label,
    "ttl": t.expires_at - t.issued_at,
    "token_prefix": t.token[:4],
}
got = ADMIN.get(t.id)
out["got"] = {
    "status": got.status,
    "caps_per_window": str(got.caps.per_window),
    "effective_per_window": str(got.effective_caps.per_window),
    "spend_window": str(got.spend.window),
}
out["listed"] = [x.id for x in ADMIN.list(label_prefix="py/admin/")]
out["policies"] = sorted(p.name for p in ADMIN.policies())
for name, fn, cls in [
    (
        "invalid",
        lambda: ADMIN.issue("stripe-payments", "py/admin/bad", "3h", per_transaction="9999.00"),
        bridle.InvalidRequestError,
    ),
    ("not_found", lambda: ADMIN.get("tok_doesnotexist"), bridle.NotFoundError),
    (
        "unauthenticated",
        lambda: bridle.Client(admin_key="adm_wrong_key_0123456789").list(),
        bridle.AuthenticationError,
    ),
    (
        "unreachable",
        lambda: bridle.Client(url="http://127.0.0.1:9", admin_key="k").list(),
        bridle.LedgerUnreachableError,
    ),
]:
    try:
        fn()
        out[name] = {"class": None}
    except cls as e:
        out[name] = err(e)
        out[name]["is_ledger_error"] = isinstance(e, bridle.LedgerError)
try:
    ADMIN.issue("openai-chat", "py/admin/float", "1m", per_window=1.5)
except TypeError as e:
    out["float"] = str(e)
rev = ADMIN.revoke(token_id=t.id)
out["revoked_one"] = {"kind": rev.kind, "value": rev.value, "n": rev.tokens_revoked}
out["after_revoke"] = ADMIN.get(t.id).status

# --- per-run credentials, with every vendor's official SDK ------------------------------
with bridle.run(
    "py/run-1",
    stripe={"policy": "stripe-payments", "expires_in": "10m", "per_transaction": "50.00"},
    openai={"policy": "openai-chat"},
    anthropic={"policy": "anthropic-messages"},
    resend={"policy": "resend-transactional"},
    twilio={"policy": "twilio-sms", "merchants": [SID]},
) as creds:
    run1 = {v: creds[v].id for v in creds.tokens}
    out["creds_repr"] = repr(creds)
    sc = creds.stripe()
    scoped = {"stripe_account": MERCHANT}
    pi = sc.v1.payment_intents.create(params={"amount": 1500, "currency": "usd"}, options=scoped)
    out["stripe_allowed"] = {"id": pi.id, "type": type(pi).__name__}
    out["stripe_cap"] = refused(
        lambda: sc.v1.payment_intents.create(
            params={"amount": 6000, "currency": "usd"}, options=scoped
        )
    )
    out["stripe_endpoint"] = refused(
        lambda: sc.v1.refunds.create(params={"charge": "ch_1"}, options=scoped)
    )
    oc = creds.openai()
    c = oc.chat.completions.create(
        model="gpt-4o-mini", messages=[{"role": "user", "content": "hello"}]
    )
    out["openai_allowed"] = {"id": c.id, "type": type(c).__name__}
    out["openai_endpoint"] = refused(lambda: oc.files.list())
    ac = creds.anthropic()
    m = ac.messages.create(
        model="claude-haiku-4-5", max_tokens=16, messages=[{"role": "user", "content": "hello"}]
    )
    out["anthropic_allowed"] = {"id": m.id, "type": type(m).__name__}
    rs = creds.resend()
    sent = rs.Emails.send(
        {"from": "a@example.com", "to": ["b@example.com"], "subject": "s", "html": "<p>x</p>"}
    )
    out["resend_allowed"] = {"id": sent["id"]}
    tc = creds.twilio()
    msg = tc.messages.create(to="+15551234567", from_="+15557654321", body="Shipped.")
    out["twilio_allowed"] = {"sid": msg.sid}

    # LangChain: the same Stripe client as a tool; a refusal is the tool's answer.
    @bridle_tool
    def charge(amount_cents: int) -> str:
        """Take a payment of amount_cents US cents on the agent's connected account."""
        return sc.v1.payment_intents.create(
            params={"amount": amount_cents, "currency": "usd"}, options=scoped
        ).id

    out["tool"] = {
        "name": charge.name,
        "description": charge.description,
        "allowed": charge.invoke({"amount_cents": 700}),
        "refused": charge.invoke({"amount_cents": 7000}),
    }
    out["refusal_of_other"] = bridle.refusal(ValueError("not from Bridle")) is None

out["run1"] = run1
out["run1_revocation"] = {
    "kind": creds.revocation.kind,
    "value": creds.revocation.value,
    "n": creds.revocation.tokens_revoked,
}
out["run1_status"] = {v: ADMIN.get(i).status for v, i in run1.items()}
# The proxy refuses the run's token as soon as its revocation reaches it.
start = time.monotonic()
while True:
    seen = refused(lambda: sc.v1.charges.retrieve("ch_1", options=scoped))
    if seen.get("reason") == "token_revoked" or time.monotonic() - start > 10:
        out["stripe_after_exit"] = seen
        break
    time.sleep(0.05)

# --- an exception inside the block still revokes -----------------------------------------
try:
    with bridle.run("py/run-2", openai={"policy": "openai-chat"}) as creds2:
        run2 = creds2["openai"].id
        raise RuntimeError("the agent crashed")
except RuntimeError as e:
    out["run2_error"] = str(e)
out["run2_status"] = ADMIN.get(run2).status

# --- an issue that fails half-way revokes what was issued -------------------------------
try:
    with bridle.run(
        "py/run-3",
        openai={"policy": "openai-chat"},
        stripe={"policy": "stripe-payments", "per_window": "99999.00"},
    ):
        out["run3_entered"] = True
except bridle.InvalidRequestError as e:
    out["run3_error"] = err(e)
out["run3_tokens"] = sorted((x.label, x.status) for x in ADMIN.list(label_prefix="py/run-3/"))
try:
    bridle.run("py/run-4/", openai={"policy": "openai-chat"})
except ValueError as e:
    out["trailing_slash"] = str(e)


# --- async ---------------------------------------------------------------------------------
async def async_part():
    res = {}
    async with bridle.AsyncClient() as admin:
        async with bridle.run(
            "py/run-5",
            client=admin,
            openai={"policy": "openai-chat"},
            anthropic={"policy": "anthropic-messages"},
        ) as c5:
            ids = {v: c5[v].id for v in c5.tokens}
            chat = await c5.async_openai().chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
            )
            msg = await c5.async_anthropic().messages.create(
                model="claude-haiku-4-5", max_tokens=16, messages=[{"role": "user", "content": "hi"}]
            )
            res["async_calls"] = [chat.id, msg.id]
            res["async_during"] = (await admin.get(ids["openai"])).status
        res["async_status"] = {v: (await admin.get(i)).status for v, i in ids.items()}
        # The audit log of run 1: the filter reports in batches, so wait for the refusal.
        deadline = time.monotonic() + 10
        while True:
            records = [r async for r in admin.audit(label_prefix="py/run-1/", page_size=2)]
            reasons = sorted({r.reason for r in records})
            if "cap_per_transaction" in reasons or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        res["audit_reasons"] = reasons
        res["audit_count"] = len(records)
        res["audit_costs"] = sorted(str(r.cost) for r in records if r.cost is not None)
    try:
        async with bridle.run("py/run-6", openai={"policy": "openai-chat"}) as c6:
            id6 = c6["openai"].id
            raise ValueError("boom")
    except ValueError:
        pass
    async with bridle.AsyncClient() as admin:
        res["async_exception_status"] = (await admin.get(id6)).status
    return res


out.update(asyncio.run(async_part()))
print(json.dumps(out), flush=True)
