"""Signed webhook deliveries to a real local receiver: success, retries, disabling."""

from __future__ import annotations

import json

from sqlalchemy.ext.asyncio import AsyncEngine

from fusion_prime.platform.embedded import free_port
from tests.harness import asgi_client, count_rows, fetch, fetchval
from tests.settlement.factory import FAST, SPEC, Escrow, deliver, wait_for
from tests.settlement.receiver import receiver

ALL = ["escrow.created", "escrow.approved", "escrow.released", "escrow.refunded"]


async def _deliveries_done(db: str, status: str, n: int) -> bool:
    return await count_rows(db, "webhook_deliveries", "status = $1", status) == n


async def test_state_changes_are_delivered_signed(db: str, engine: AsyncEngine) -> None:
    with receiver() as rx:
        async with asgi_client(SPEC, db, **FAST) as client:
            created = await client.post("/webhooks", json={"url": rx.url, "event_types": ALL})
            assert created.status_code == 201, created.text
            hook = created.json()
            rx.secret = hook["secret"]
            assert rx.secret.startswith("whsec_")
            # the secret is shown once, stored only encrypted
            shown = (await client.get(f"/webhooks/{hook['id']}")).json()
            assert "secret" not in shown
            assert "secret_ciphertext" not in shown
            stored = await fetchval(db, "SELECT secret_ciphertext FROM webhook_endpoints")
            assert rx.secret.encode() not in bytes(stored)

            e = Escrow()
            await deliver(engine, [e.deployed(required=1), e.approved(e.payee), e.released()])
            # created in the same transaction as the state changes
            assert await count_rows(db, "webhook_deliveries") == 3
            await wait_for(lambda: _deliveries_done(db, "succeeded", 3))

            bodies = [json.loads(b) for b in rx.verified_bodies()]
            assert sorted(b["type"] for b in bodies) == sorted(
                ["escrow.created", "escrow.approved", "escrow.released"]
            )
            outbox_ids = {r["id"] for r in await fetch(db, "SELECT id::text FROM outbox")}
            assert {b["id"] for b in bodies} == outbox_ids
            assert all(r.headers["Fusion-Prime-Signature"].startswith("t=") for r in rx.requests)
            listed = (await client.get(f"/webhooks/{hook['id']}/deliveries")).json()["items"]
            assert len(listed) == 3
            assert all(d["status"] == "succeeded" for d in listed)
            assert all(d["attempt_log"][0]["status_code"] == 200 for d in listed)
            assert (
                await client.get("/webhooks/5b0f2f8e-0000-4000-8000-000000000000/deliveries")
            ).status_code == 404
            bad = await client.post("/webhooks", json={"url": "ftp://x", "event_types": ["nope"]})
            assert bad.status_code == 422
            assert {x["field"].split(".")[0] for x in bad.json()["errors"]} == {
                "url",
                "event_types",
            }
    assert await count_rows(db, "webhook_attempts") == 3


async def test_failed_attempts_are_retried_and_recorded(db: str, engine: AsyncEngine) -> None:
    settings = FAST | {"SETTLEMENT_WEBHOOK_RETRY_SCHEDULE": "0.1,0.1,0.1"}
    with receiver(fail_first=2) as rx, receiver(always_fail=True) as down:
        async with asgi_client(SPEC, db, **settings) as client:
            flaky = (
                await client.post("/webhooks", json={"url": rx.url, "event_types": ALL})
            ).json()
            rx.secret = flaky["secret"]
            broken = (
                await client.post(
                    "/webhooks", json={"url": down.url, "event_types": ["escrow.created"]}
                )
            ).json()
            down.secret = broken["secret"]
            await deliver(engine, [Escrow().deployed()])
            await wait_for(lambda: _deliveries_done(db, "succeeded", 1))
            await wait_for(lambda: _deliveries_done(db, "failed", 1))
            attempts = await fetch(
                db,
                "SELECT w.url, a.attempt, a.status_code, a.succeeded FROM webhook_attempts a "
                "JOIN webhook_deliveries d ON d.id = a.delivery_id "
                "JOIN webhook_endpoints w ON w.id = d.endpoint_id ORDER BY w.url, a.attempt",
            )
            by_url: dict[str, list[int]] = {}
            for a in attempts:
                by_url.setdefault(a["url"], []).append(a["status_code"])
            assert by_url[rx.url] == [500, 500, 200]
            assert by_url[down.url] == [500, 500, 500, 500]  # first try + 3 retries
            failed = (await client.get(f"/webhooks/{broken['id']}/deliveries")).json()["items"]
            assert failed[0]["status"] == "failed"
            assert failed[0]["attempts"] == 4
            # every request carried a valid signature, also the refused ones
            assert all(r.verified for r in rx.requests + down.requests)


async def test_endpoint_failing_too_long_is_disabled(db: str, engine: AsyncEngine) -> None:
    dead = f"http://127.0.0.1:{free_port()}/gone"
    settings = FAST | {
        "SETTLEMENT_WEBHOOK_RETRY_SCHEDULE": ",".join(["0.1"] * 50),
        "SETTLEMENT_WEBHOOK_DISABLE_AFTER": "0.4",
        "SETTLEMENT_WEBHOOK_TIMEOUT": "1",
    }
    async with asgi_client(SPEC, db, **settings) as client:
        hook = (await client.post("/webhooks", json={"url": dead, "event_types": ALL})).json()
        e = Escrow()
        await deliver(engine, [e.deployed(required=1)])

        async def disabled() -> bool:
            return (await client.get(f"/webhooks/{hook['id']}")).json()["enabled"] is False

        await wait_for(disabled)
        row = (await fetch(db, "SELECT * FROM webhook_deliveries"))[0]
        assert row["status"] == "failed"
        assert row["attempts"] >= 2
        assert await count_rows(db, "webhook_attempts") == row["attempts"]
        assert await fetchval(db, "SELECT disabled_reason FROM webhook_endpoints")
        # a disabled endpoint gets no new deliveries (this approval is a state change)
        await deliver(engine, [e.approved(e.payer)])
        assert await fetchval(db, "SELECT status FROM escrows") == "approved"
        assert await count_rows(db, "webhook_deliveries") == 1
        # until its owner re-enables it
        enabled = await client.post(f"/webhooks/{hook['id']}/enable")
        assert enabled.json()["enabled"] is True
        assert enabled.json()["disabled_at"] is None
        await deliver(engine, [e.refunded()])
        assert await count_rows(db, "webhook_deliveries") == 2


async def test_webhook_key_rotation(db: str, engine: AsyncEngine) -> None:
    import subprocess
    import sys

    from tests.harness import REPO_ROOT, _env

    old_key, new_key = "old-" + "a" * 40, "new-" + "b" * 40
    with receiver() as rx:
        async with asgi_client(SPEC, db, **FAST | {"SETTLEMENT_WEBHOOK_KEY": old_key}) as client:
            hook = (await client.post("/webhooks", json={"url": rx.url, "event_types": ALL})).json()
            rx.secret = hook["secret"]
        before = bytes(await fetchval(db, "SELECT secret_ciphertext FROM webhook_endpoints"))
        env = _env(
            db, {"SETTLEMENT_WEBHOOK_KEY": new_key, "SETTLEMENT_WEBHOOK_PREVIOUS_KEYS": old_key}
        )
        done = subprocess.run(
            [sys.executable, "-m", "fusion_prime.cli", "settlement", "reencrypt-webhook-secrets"],
            env=env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "re-encrypted 1" in done.stdout
        after = bytes(await fetchval(db, "SELECT secret_ciphertext FROM webhook_endpoints"))
        assert after != before
        # the new key alone now signs with the same secret
        async with asgi_client(SPEC, db, **FAST | {"SETTLEMENT_WEBHOOK_KEY": new_key}):
            await deliver(engine, [Escrow().deployed()])
            await wait_for(lambda: _deliveries_done(db, "succeeded", 1))
        assert len(rx.verified_bodies()) == 1
