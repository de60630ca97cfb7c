"""The dashboard in a real headless Chromium: pages at 1280 and 390 px, live updates over server-sent events,
signing in, and an operator rollback through the HTTP API, end to end against a real PostgreSQL."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import asyncpg
import pytest

from tests.browser.conftest import NARROW, WIDE, screenshot_path
from tests.browser.demo import (
    AA,
    BLOCKED,
    NASTY,
    OPERATOR_TOKEN,
    PROMOTED,
    ROLLED_BACK,
    VIEWER_TOKEN,
    WINNER,
    make_context,
    seed_demo,
    serve,
)
from tests.factories import create_experiment, record
from tests.fakes import evaluation_bus_event
from worker.engine import Engine
from worker.http.auth import SESSION_COOKIE

pytestmark = pytest.mark.browser

PAGES = (
    ("overview", "/"),
    ("experiment-winner", f"/experiments/{WINNER}"),
    ("experiment-blocked", f"/experiments/{BLOCKED}"),
    ("experiment-rolled-back", f"/experiments/{ROLLED_BACK}"),
    ("promotions", "/promotions"),
    ("plan", "/plan?metricType=conversion&baseline=0.1&mde=10&dailyExposures=2000"),
)


async def _open(page: Any, url: str) -> None:
    """Load a page and wait until its event stream is connected (so no later event can be missed)."""
    from playwright.async_api import expect

    await page.goto(url)
    await expect(page.locator("#live-status")).to_have_attribute("data-state", "on")
    await page.evaluate("window.__sameDocument = true")


async def _no_reload(page: Any) -> bool:
    return bool(await page.evaluate("window.__sameDocument === true"))


async def _flush_events(ctx: Any, page: Any, marker: str) -> None:
    """Publish a marker event and wait until the page lists it: every earlier event has been handled."""
    from playwright.async_api import expect

    ctx.events.publish(evaluation_bus_event(marker, eligible=False))
    await expect(page.locator("#activity li", has_text=marker)).to_have_count(1)


async def test_pages_load_with_demo_experiments_at_both_widths(
    pool: asyncpg.Pool, conn: asyncpg.Connection, new_page: Any
) -> None:
    from playwright.async_api import expect

    ctx = make_context(pool)
    await seed_demo(conn, ctx.engine)
    async with serve(ctx) as base:
        for width, viewport in (("1280", WIDE), ("390", NARROW)):
            page = await new_page(viewport)
            for name, path in PAGES:
                await _open(page, base + path)
                if name == "overview":
                    await expect(page.locator("article.exp")).to_have_count(5)
                    winner = page.locator(f'article.exp[data-experiment="{WINNER}"]')
                    await expect(winner.locator(".badge.ok")).to_have_text("✓ eligible")
                    await expect(winner.locator(".lift").first).to_have_text("+12.0%")
                    aa = page.locator(f'article.exp[data-experiment="{AA}"]')
                    await expect(aa.locator(".badge.bad")).to_have_text("✗ blocked")
                    await expect(aa.locator(".reasons")).to_contain_text("no treatment beats control")
                    blocked = page.locator(f'article.exp[data-experiment="{BLOCKED}"]')
                    await expect(blocked.locator(".reasons")).to_contain_text("safety check failed: Error Rate Check")
                    promoted = page.locator(f'article.exp[data-experiment="{PROMOTED}"]')
                    await expect(promoted.locator(".badge.status-promoted")).to_contain_text("promoted")
                    await expect(
                        promoted.get_by_role("button", name=f"Roll back the promotion of {PROMOTED}")
                    ).to_be_visible()
                    rolled = page.locator(f'article.exp[data-experiment="{ROLLED_BACK}"]')
                    await expect(rolled.locator(".badge.status-rolled_back")).to_contain_text("rolled back")
                elif name == "experiment-winner":
                    await expect(page.locator("svg.chart:visible")).to_have_count(1)
                    await expect(page.get_by_role("img", name="Lift of variant-b over control")).to_be_visible()
                    await expect(page.locator("svg.chart:visible polyline.lift-line")).to_have_count(1)
                    await expect(page.locator(".check.ok")).to_have_count(3)
                    await expect(page.locator(".check.warn")).to_contain_text("⚠ passed with a warning")
                    await expect(page.locator("#main")).to_contain_text("Never promoted.")
                elif name == "experiment-blocked":
                    await expect(page.locator(".check.bad")).to_contain_text("✗ failed")
                    await expect(page.locator(".check.bad")).to_contain_text("Error Rate Check")
                elif name == "experiment-rolled-back":
                    history = page.locator("section", has=page.locator("#history-h"))
                    await expect(history).to_contain_text("↩ rolled back")
                    await expect(history).to_contain_text("checkout errors up since the promotion")
                    audit = page.locator("section", has=page.locator("#audit-h"))
                    await expect(audit.locator("tbody tr")).to_have_count(2)  # promoted, rolled_back
                elif name == "plan":
                    result = page.locator("section", has=page.locator("#plan-result-h"))
                    await expect(result.locator("tbody tr")).to_have_count(3)  # exposures, days, median stop
                    await expect(page.get_by_label("Minimum detectable effect (%)")).to_have_value("10")
                else:
                    await expect(page.locator("#stats-h")).to_have_text("Last 30 days")
                    await expect(page.locator(".figures")).to_contain_text("Rollback rate")
                    await expect(page.locator(".figures")).to_contain_text("50.0%")
                    await expect(page.get_by_role("img", name="Promotions and rollbacks per day")).to_be_visible()
                    active = page.locator("section", has=page.locator("#active-h"))
                    await expect(active.locator("tbody tr")).to_have_count(1)
                    await expect(active).to_contain_text(PROMOTED)
                    rolled_section = page.locator("section", has=page.locator("#rolled-h"))
                    await expect(rolled_section).to_contain_text("checkout errors up since the promotion")
                sideways = await page.evaluate(
                    "document.documentElement.scrollWidth - document.documentElement.clientWidth"
                )
                assert sideways <= 0, f"{path} scrolls sideways by {sideways}px at {width}px"
                await page.screenshot(path=str(screenshot_path(f"{name}-{width}")), full_page=True)
    assert new_page.errors == []


async def test_every_control_has_a_label_and_keyboard_reaches_it(
    pool: asyncpg.Pool, conn: asyncpg.Connection, new_page: Any
) -> None:
    from playwright.async_api import expect

    ctx = make_context(pool)
    await seed_demo(conn, ctx.engine)
    async with serve(ctx) as base:
        page = await new_page(WIDE)
        for _, path in PAGES:
            await _open(page, base + path)
            unlabeled = await page.evaluate("""() => {
                const out = [];
                for (const el of document.querySelectorAll('button, input, textarea, select, a[href], summary')) {
                    const name = (el.labels && el.labels.length ? el.labels[0].textContent
                                  : el.getAttribute('aria-label') || el.textContent || '').trim();
                    if (!name) out.push(el.outerHTML.slice(0, 120));
                }
                return out;
            }""")
            assert unlabeled == [], (path, unlabeled)
        # Keyboard only: skip link first, then the dialog opens on Enter and gives focus back on Escape.
        await _open(page, base + "/promotions")
        await page.keyboard.press("Tab")
        await expect(page.locator("a.skip")).to_be_focused()
        await page.evaluate("sessionStorage.setItem('autopromote.apiToken', 'x')")
        button = page.get_by_role("button", name=f"Roll back the promotion of {PROMOTED}")
        await button.focus()
        await page.keyboard.press("Enter")
        await expect(page.locator("#confirm-dialog")).to_be_visible()
        await expect(page.locator("#confirm-reason")).to_be_focused()
        await page.keyboard.press("Escape")
        await expect(page.locator("#confirm-dialog")).to_be_hidden()
        await expect(button).to_be_focused()
        outline = await button.evaluate("el => getComputedStyle(el).outlineStyle")
        assert outline != "none", "focused buttons must show a focus ring"
    assert new_page.errors == []


async def test_promotion_made_in_database_appears_without_reload(
    pool: asyncpg.Pool, conn: asyncpg.Connection, new_page: Any
) -> None:
    from playwright.async_api import expect

    ctx = make_context(pool)
    await seed_demo(conn, ctx.engine)
    async with serve(ctx) as base:
        overview = await new_page(WIDE)
        detail = await new_page(NARROW)
        promotions = await new_page(WIDE)
        await _open(overview, base + "/")
        await _open(detail, base + "/experiments/" + quote(WINNER, safe=""))
        await _open(promotions, base + "/promotions")
        card = overview.locator(f'article.exp[data-experiment="{WINNER}"]')
        await expect(card.locator(".badge.status-running")).to_be_visible()

        # An Engine with no commit hook: the page can only learn of it through the LISTEN bridge.
        outsider = Engine(pool, ctx.settings, ctx.config)
        result = await outsider.promote_winner(WINNER, actor="another-worker")
        assert result["success"], result
        pid = result["promotionId"]

        await expect(card.locator(".badge.status-promoted")).to_be_visible()
        await expect(card.get_by_role("button", name=f"Roll back the promotion of {WINNER}")).to_be_visible()
        await expect(overview.locator('#activity li[data-type="promotion"]')).to_contain_text(WINNER)
        await expect(detail.locator(f'tr[data-promotion-id="{pid}"]')).to_contain_text("★ active")
        await expect(detail.locator("section", has=detail.locator("#audit-h"))).to_contain_text("another-worker")
        await expect(promotions.locator(f'tr[data-promotion-id="{pid}"]')).to_contain_text(WINNER)
        for page in (overview, detail, promotions):
            assert await _no_reload(page), "the page was reloaded instead of updated in place"
        await overview.screenshot(path=str(screenshot_path("overview-after-live-promotion-1280")), full_page=True)
        await detail.screenshot(path=str(screenshot_path("experiment-after-live-promotion-390")), full_page=True)

        # An evaluation event re-fetches that experiment's card (and the summary line), not the whole list.
        list_version = await overview.locator("#experiments").get_attribute("data-version")
        await record(conn, AA, "control", 5_000, 500)
        await ctx.engine.check_promotion_eligibility(AA)
        ctx.events.publish(evaluation_bus_event(AA, eligible=False))
        aa = overview.locator(f'article.exp[data-experiment="{AA}"]')
        await expect(aa.locator("tbody tr").first).to_contain_text("22,500")
        await _flush_events(ctx, overview, "zz-marker")
        assert await overview.locator("#experiments").get_attribute("data-version") == list_version

        # An evaluation of an experiment the page has not shown yet brings in its card.
        await create_experiment(conn, "brand-new-test")
        await record(conn, "brand-new-test", "control", 100, 10)
        await ctx.engine.check_promotion_eligibility("brand-new-test")
        ctx.events.publish(evaluation_bus_event("brand-new-test", eligible=False))
        await expect(overview.locator('article.exp[data-experiment="brand-new-test"]')).to_be_visible()
        await expect(overview.locator("#experiments-summary")).to_contain_text("6 experiment(s): 3 running")
        assert await _no_reload(overview)
    assert new_page.errors == []


async def test_operator_rollback_from_the_page_end_to_end(
    pool: asyncpg.Pool, conn: asyncpg.Connection, new_page: Any
) -> None:
    pytest.importorskip("worker.http.api", reason="the HTTP API (worker/http/api/) has not landed")
    from playwright.async_api import expect

    ctx = make_context(pool)
    ids = await seed_demo(conn, ctx.engine)
    pid = ids[PROMOTED]
    async with serve(ctx) as base:
        page = await new_page(WIDE)
        watcher = await new_page(NARROW)
        requests: list[Any] = []
        page.on("request", lambda r: requests.append(r) if "/api/" in r.url else None)
        await _open(page, base + "/promotions")
        await _open(watcher, base + "/experiments/" + quote(PROMOTED, safe=""))

        # Without a token the action asks for one instead of calling the API.
        await page.get_by_role("button", name=f"Roll back the promotion of {PROMOTED}").click()
        await expect(page.locator("#operator")).to_have_attribute("open", "")
        await expect(page.locator("#api-token")).to_be_focused()
        assert requests == []

        await page.get_by_label("API token").fill(OPERATOR_TOKEN)
        await page.get_by_role("button", name="Use token").click()
        await expect(page.locator("#token-state")).to_have_text("set for this tab")
        assert await page.evaluate("sessionStorage.getItem('autopromote.apiToken')") == OPERATOR_TOKEN
        assert await page.locator("#api-token").input_value() == ""

        await page.get_by_role("button", name=f"Roll back the promotion of {PROMOTED}").click()
        dialog = page.locator("#confirm-dialog")
        await expect(dialog).to_be_visible()
        await expect(dialog).to_contain_text(PROMOTED)
        await dialog.get_by_role("button", name="Roll back").click()  # no reason yet: the form refuses
        await expect(dialog).to_be_visible()
        assert requests == []
        await dialog.get_by_label("Reason for the rollback").fill("conversion dropped in the EU after the promotion")
        await page.screenshot(path=str(screenshot_path("promotions-rollback-dialog-1280")))
        await dialog.get_by_role("button", name="Roll back").click()
        await expect(dialog).to_be_hidden()

        await expect(page.locator("#action-status")).to_contain_text(f"Rolled back variant-b of “{PROMOTED}”")
        row = await conn.fetchrow(
            "SELECT rollback_at, rollback_reason, rolled_back_by FROM experiment_promotions WHERE id = $1", pid
        )
        assert row["rollback_at"] is not None
        assert row["rollback_reason"] == "conversion dropped in the EU after the promotion"
        assert row["rolled_back_by"] == "ops"
        assert await conn.fetchval("SELECT status FROM ab_experiments WHERE name = $1", PROMOTED) == "rolled_back"

        active = page.locator("section", has=page.locator("#active-h"))
        rolled = page.locator("section", has=page.locator("#rolled-h"))
        await expect(active.locator(f'tr[data-promotion-id="{pid}"]')).to_have_count(0)
        await expect(rolled.locator(f'tr[data-promotion-id="{pid}"]')).to_contain_text("conversion dropped in the EU")
        await expect(watcher.locator(".badge.status-rolled_back")).to_be_visible()
        await expect(watcher.locator(f'tr[data-promotion-id="{pid}"]')).to_contain_text("↩ rolled back")
        # The engine's commit hook and the NOTIFY bridge both reported it; the page lists it once.
        await _flush_events(ctx, page, "zz-marker")
        await expect(page.locator('#activity li[data-type="rollback"]')).to_have_count(1)
        assert await _no_reload(page) and await _no_reload(watcher)

        api_calls = [r for r in requests if r.method == "POST"]
        assert len(api_calls) == 1
        call = api_calls[0]
        assert OPERATOR_TOKEN not in call.url
        assert call.headers["authorization"] == f"Bearer {OPERATOR_TOKEN}"
        assert call.post_data_json == {
            "action": "rollback",
            "promotionId": pid,
            "reason": "conversion dropped in the EU after the promotion",
        }
        assert all(OPERATOR_TOKEN not in r.url for r in requests)
        await page.screenshot(path=str(screenshot_path("promotions-after-rollback-1280")), full_page=True)

        await page.get_by_text("Operator token:").click()
        await page.get_by_role("button", name="Forget token").click()
        await expect(page.locator("#token-state")).to_have_text("not set")
        assert await page.evaluate("sessionStorage.getItem('autopromote.apiToken')") is None
    assert new_page.errors == []


async def test_operator_actions_report_api_refusals(
    pool: asyncpg.Pool, conn: asyncpg.Connection, new_page: Any
) -> None:
    pytest.importorskip("worker.http.api", reason="the HTTP API (worker/http/api/) has not landed")
    from playwright.async_api import expect

    ctx = make_context(pool)
    await seed_demo(conn, ctx.engine)
    async with serve(ctx) as base:
        page = await new_page(NARROW)
        await _open(page, base + "/")
        card = page.locator(f'article.exp[data-experiment="{AA}"]')

        # A viewer may run the dry-run check ...
        await page.get_by_text("Operator token:").click()
        await page.get_by_label("API token").fill(VIEWER_TOKEN)
        await page.get_by_role("button", name="Use token").click()
        await card.get_by_role("button", name=f"Dry-run check of {AA}").click()
        await page.locator("#confirm-dialog").get_by_role("button", name="Run check").click()
        await expect(page.locator("#action-status")).to_contain_text(f"“{AA}” is not eligible yet")
        await expect(page.locator("#action-status li").first).to_contain_text("no treatment beats control")

        # ... but not promote: 403 with the API's message.
        winner = page.locator(f'article.exp[data-experiment="{WINNER}"]')
        await winner.get_by_role("button", name=f"Promote the winner of {WINNER}").click()
        await page.locator("#confirm-dialog").get_by_role("button", name="Promote").click()
        await expect(page.locator("#action-status")).to_contain_text("403")
        await expect(page.locator("#action-status")).to_contain_text("operator role")
        assert await conn.fetchval("SELECT count(*) FROM experiment_promotions WHERE experiment_name = $1", WINNER) == 0

        # An unknown token is a 401: the page forgets it and asks again.
        await page.evaluate("sessionStorage.setItem('autopromote.apiToken', 'not-a-real-token')")
        await card.get_by_role("button", name=f"Dry-run check of {AA}").click()
        await page.locator("#confirm-dialog").get_by_role("button", name="Run check").click()
        await expect(page.locator("#action-status")).to_contain_text("401")
        await expect(page.locator("#token-state")).to_have_text("not set")
        await expect(page.locator("#api-token")).to_be_focused()
        await page.screenshot(path=str(screenshot_path("overview-api-refusal-390")))

        # An operator promotes; a blocked experiment is refused with its reasons ...
        await page.get_by_label("API token").fill(OPERATOR_TOKEN)
        await page.get_by_role("button", name="Use token").click()
        await card.get_by_role("button", name=f"Promote the winner of {AA}").click()
        await expect(page.locator("#confirm-dialog")).to_be_visible()
        await page.screenshot(path=str(screenshot_path("overview-promote-dialog-390")))
        await page.locator("#confirm-dialog").get_by_role("button", name="Promote").click()
        await expect(page.locator("#action-status")).to_contain_text(f"Not promoted: “{AA}”")
        await expect(page.locator("#action-status li").first).to_contain_text("no treatment beats control")
        # ... the winner is promoted, and its card updates in place.
        await winner.get_by_role("button", name=f"Promote the winner of {WINNER}").click()
        await page.locator("#confirm-dialog").get_by_role("button", name="Promote").click()
        await expect(page.locator("#action-status")).to_contain_text(f"Promoted variant-b of “{WINNER}”")
        await expect(winner.locator(".badge.status-promoted")).to_be_visible()
    assert new_page.errors == [] or all("401" in e or "403" in e for e in new_page.errors), new_page.errors


async def test_hostile_experiment_name_is_shown_as_text(
    pool: asyncpg.Pool, conn: asyncpg.Connection, new_page: Any
) -> None:
    from playwright.async_api import expect

    ctx = make_context(pool)
    await create_experiment(conn, NASTY, ["control", "<b>bold</b>"])
    await record(conn, NASTY, "control", 3_000, 300)
    await record(conn, NASTY, "<b>bold</b>", 3_000, 330)
    await ctx.engine.check_promotion_eligibility(NASTY)
    async with serve(ctx) as base:
        page = await new_page(WIDE)
        await _open(page, base + "/")
        link = page.get_by_role("link", name=NASTY)
        await expect(link).to_be_visible()
        assert await page.locator("img").count() == 0
        assert await page.locator("main b").count() == 0
        await link.click()
        await expect(page.locator("h1")).to_have_text(f"Experiment {NASTY}")
        await expect(page.get_by_role("img", name="Lift of <b>bold</b> over control")).to_be_visible()
        assert await page.locator("img").count() == 0
        ctx.events.publish(evaluation_bus_event(NASTY, eligible=False))
        await expect(page.locator("#activity li").first).to_contain_text(NASTY)
        assert await page.locator("img").count() == 0
    assert new_page.errors == []


def _refusals_only(errors: list[str]) -> bool:
    """Chromium logs every 401 response as a console error; those are expected here, nothing else is."""
    return all("401" in e for e in errors)


async def test_anonymous_visitor_is_refused_and_asked_to_sign_in(
    pool: asyncpg.Pool, conn: asyncpg.Connection, new_page: Any
) -> None:
    from playwright.async_api import expect

    ctx = make_context(pool)
    await seed_demo(conn, ctx.engine)
    async with serve(ctx) as base:
        page = await new_page(NARROW, token=None)
        response = await page.goto(base + "/experiments/" + quote(ROLLED_BACK, safe=""))
        assert response is not None and response.status == 401
        await expect(page.locator("h1")).to_have_text("Sign in")
        await expect(page.get_by_label("API token")).to_be_focused()
        # Nothing of the experiment, its audit log or the live stream reaches an anonymous visitor.
        await expect(page.locator("body")).not_to_contain_text("checkout errors up since the promotion")
        assert await page.locator("article, #activity, #live-status").count() == 0
        refused = await page.evaluate("""async () => {
            const out = {};
            for (const path of ['/events', '/fragments/experiments', '/fragments/promotions']) {
                const res = await fetch(path);
                out[path] = [res.status, (await res.json()).error.code];
            }
            return out;
        }""")
        assert refused == {
            p: [401, "unauthorized"] for p in ("/events", "/fragments/experiments", "/fragments/promotions")
        }
        # A wrong token is refused with a message, and the form stays.
        await page.get_by_label("API token").fill("not-a-token")
        await page.get_by_role("button", name="Sign in").click()
        await expect(page.get_by_role("alert")).to_contain_text("unknown or was revoked")
        assert await page.context.cookies() == []
        await page.screenshot(path=str(screenshot_path("sign-in-refused-390")), full_page=True)
    assert _refusals_only(new_page.errors), new_page.errors


async def test_signing_in_once_shows_the_pages_and_live_updates(
    pool: asyncpg.Pool, conn: asyncpg.Connection, new_page: Any
) -> None:
    from playwright.async_api import expect

    ctx = make_context(pool)
    await seed_demo(conn, ctx.engine)
    async with serve(ctx) as base:
        page = await new_page(WIDE, token=None)
        await page.goto(base + "/promotions")
        await expect(page.locator("h1")).to_have_text("Sign in")
        await page.screenshot(path=str(screenshot_path("sign-in-1280")), full_page=True)
        await page.get_by_label("API token").fill(VIEWER_TOKEN)
        await page.get_by_role("button", name="Sign in").click()
        # Back where the visitor was going, signed in, with the event stream connected through the cookie.
        await expect(page).to_have_url(base + "/promotions")
        await expect(page.locator("h1")).to_have_text("Promotions")
        await expect(page.locator(".who")).to_contain_text("Signed in as watcher (viewer)")
        await expect(page.locator("#live-status")).to_have_attribute("data-state", "on")
        cookies = await page.context.cookies()
        assert [(c["name"], c["httpOnly"], c["sameSite"], c["secure"]) for c in cookies] == [
            (SESSION_COOKIE, True, "Strict", False)
        ]
        assert await page.evaluate("document.cookie") == ""  # scripts cannot read it
        assert VIEWER_TOKEN not in page.url
        # Other pages need no second sign-in.
        await page.goto(base + "/")
        await expect(page.locator("article.exp")).to_have_count(5)
        await expect(page.locator("#live-status")).to_have_attribute("data-state", "on")
        await page.evaluate("window.__sameDocument = true")
        ctx.events.publish(evaluation_bus_event(AA, eligible=False))
        await expect(page.locator("#activity li", has_text=AA)).to_have_count(1)
        assert await _no_reload(page)

        # When the sign-in stops working (here: the cookie is gone), the next refresh brings the sign-in back,
        # and signing in returns to the same page.
        await page.context.clear_cookies()
        ctx.events.publish(evaluation_bus_event(AA, eligible=False))
        await expect(page.locator("h1")).to_have_text("Sign in")
        await page.get_by_label("API token").fill(VIEWER_TOKEN)
        await page.get_by_role("button", name="Sign in").click()
        await expect(page).to_have_url(base + "/")
        await expect(page.locator("article.exp")).to_have_count(5)

        await page.get_by_role("button", name="Sign out").click()
        await expect(page.locator("h1")).to_have_text("Sign in")
        assert await page.context.cookies() == []
        response = await page.goto(base + "/")
        assert response is not None and response.status == 401
    assert _refusals_only(new_page.errors), new_page.errors


async def test_a_link_from_another_site_opens_the_page_for_a_signed_in_browser(
    pool: asyncpg.Pool, conn: asyncpg.Connection, new_page: Any
) -> None:
    from playwright.async_api import expect

    ctx = make_context(pool)
    await create_experiment(conn, WINNER)
    async with serve(ctx) as base:
        # A signed-in browser follows a link in a notification (another site): SameSite=Strict withholds the
        # cookie on that navigation, and the page must not ask to sign in again.
        page = await new_page(WIDE)
        navigations: list[int] = []
        page.on("response", lambda r: navigations.append(r.status) if r.request.is_navigation_request() else None)
        await page.set_content(f'<a id="go" href="{base}/experiments/{WINNER}">open in the dashboard</a>')
        await page.click("#go")
        await expect(page.locator("h1")).to_have_text(f"Experiment {WINNER}")
        await expect(page.locator(".who")).to_contain_text("Signed in as watcher")
        assert navigations == [401, 200], navigations  # the withheld cookie, then our page's own reload

        # Without a sign-in the same link shows the form, and stays there (the reload is same-site: no loop).
        anonymous = await new_page(WIDE, token=None)
        statuses: list[int] = []
        anonymous.on("response", lambda r: statuses.append(r.status) if r.request.is_navigation_request() else None)
        await anonymous.set_content(f'<a id="go" href="{base}/experiments/{WINNER}">open in the dashboard</a>')
        await anonymous.click("#go")
        await _wait_until(lambda: len(statuses) >= 2)
        await expect(anonymous.locator("h1")).to_have_text("Sign in")
        # The reloaded form does not reload again: a same-site navigation, no cookie to wait for.
        assert await anonymous.locator('meta[http-equiv="refresh"]').count() == 0
        assert statuses == [401, 401], statuses
    assert _refusals_only(new_page.errors), new_page.errors


async def _wait_until(predicate: Any, within: float = 15.0) -> None:
    import asyncio
    import time

    deadline = time.monotonic() + within
    while not predicate():
        assert time.monotonic() < deadline, f"condition not met after {within} s"
        await asyncio.sleep(0.05)


async def test_operator_approves_and_declines_from_the_page(
    pool: asyncpg.Pool, conn: asyncpg.Connection, new_page: Any
) -> None:
    from playwright.async_api import expect

    ctx = make_context(pool)
    approvals: dict[str, str] = {}
    for name in ("approve-me", "decline-me"):
        await create_experiment(
            conn, name, ["control", "variant-b"], started_hours_ago=48, config={"approval": {"require": "promote"}}
        )
        await record(conn, name, "control", 17_500, 1_750)
        await record(conn, name, "variant-b", 17_000, 1_904)
        approvals[name] = (await ctx.engine.promote_winner(name, actor="ops"))["approvalId"]
    async with serve(ctx) as base:
        page = await new_page(WIDE)
        await _open(page, base + "/promotions")
        pending = page.locator("section", has=page.locator("#approvals-h"))
        await expect(pending.locator("h2")).to_have_text("Pending approvals (2)")
        await page.evaluate(f"sessionStorage.setItem('autopromote.apiToken', '{OPERATOR_TOKEN}')")

        await page.get_by_role("button", name="Approve the approval of approve-me").click()
        dialog = page.locator("#confirm-dialog")
        await expect(dialog).to_contain_text("approve-me")
        await page.screenshot(path=str(screenshot_path("promotions-approve-dialog-1280")))
        await dialog.get_by_role("button", name="Approve").click()
        await expect(page.locator("#action-status")).to_contain_text("Approved: “approve-me” promoted variant-b.")
        assert await conn.fetchval("SELECT promoted_by FROM experiment_promotions") == "ops"
        assert await conn.fetchval("SELECT status FROM ab_approvals WHERE id = $1::uuid", approvals["approve-me"]) == (
            "approved"
        )

        await page.get_by_role("button", name="Decline the approval of decline-me").click()
        await dialog.get_by_role("button", name="Decline").click()  # no reason yet: the form refuses
        await expect(dialog).to_be_visible()
        await dialog.get_by_label("Reason for the decline").fill("pricing freeze until Monday")
        await dialog.get_by_role("button", name="Decline").click()
        await expect(page.locator("#action-status")).to_contain_text("Declined: “decline-me” is not promoted.")
        row = await conn.fetchrow(
            "SELECT status, reason FROM ab_approvals WHERE id = $1::uuid", approvals["decline-me"]
        )
        assert (row["status"], row["reason"]) == ("declined", "pricing freeze until Monday")
        await expect(pending.locator("h2")).to_have_text("Pending approvals (0)")
        await page.screenshot(path=str(screenshot_path("promotions-after-approvals-1280")), full_page=True)
    assert new_page.errors == []
