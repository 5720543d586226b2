"""The dashboard's pages in a real headless Chromium (Debian's `chromium`, driven by playwright).

Never downloads a browser: playwright is pointed at /usr/bin/chromium. Screenshots
of every page go to `.artifacts/dashboard/` (gitignored), see dashboard/README.md.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.support.dashboard import ADMIN_TOKEN, dashboard_rig, inst, wait_for

CHROMIUM = "/usr/bin/chromium"
SHOTS = Path(__file__).parents[2] / ".artifacts" / "dashboard"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.browser,
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason="Debian chromium missing: make system-deps"),
]


async def test_live_overview_and_drain_through_the_ui(etcd_single: Any, etcd_prefix: str) -> None:
    from playwright.async_api import async_playwright, expect

    SHOTS.mkdir(parents=True, exist_ok=True)
    async with (
        dashboard_rig(list(etcd_single.endpoints), etcd_prefix, serve=True) as rig,
        async_playwright() as pw,
    ):
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = await browser.new_page()
            await page.goto(f"{rig.base_url}/login")
            await page.fill("#token", ADMIN_TOKEN)
            await page.click("button")
            await expect(page.locator("#n-services")).to_have_text("0")
            await page.wait_for_function("window.servalLive === true")
            await page.screenshot(path=SHOTS / "login-overview-empty.png")

            await rig.registry.register(inst("i-1", service="checkout.prod", weight=40))
            await rig.registry.register(inst("i-2", service="checkout.prod"))
            # Appears without a reload (SSE → refetch of <main>), well within a second.
            await expect(page.locator("#n-instances")).to_have_text("2", timeout=1000)
            await page.screenshot(path=SHOTS / "overview.png")

            await page.click("text=Services")
            await expect(page.locator("#services")).to_contain_text("checkout.prod")
            await page.screenshot(path=SHOTS / "services.png")

            await page.click("a[href='/services/checkout.prod']")
            row = page.locator("tr[data-instance='i-1']")
            await expect(row.locator(".weight")).to_have_text("40")
            await row.locator("button.drain").click()
            await expect(row.locator(".weight")).to_have_text("0")
            await page.screenshot(path=SHOTS / "service.png")
            resolved = await rig.registry.resolve("checkout.prod")
            assert {i.instance_id: i.weight for i in resolved.instances}["i-1"] == 0
            await wait_for(lambda: rig.state.audit and rig.state.audit[-1]["action"] == "drain")

            # Undrain restores the weight it had; the weight form sets a new one.
            await row.locator("button.undrain").click()
            await expect(row.locator(".weight")).to_have_text("40")
            await row.locator("input[name='weight']").fill("75")
            await row.locator("button.set-weight").click()
            await expect(row.locator(".weight")).to_have_text("75")
            resolved = await rig.registry.resolve("checkout.prod")
            assert {i.instance_id: (i.weight, i.drained) for i in resolved.instances}["i-1"] == (75, False)
            await expect(row.locator(".lease")).to_contain_text("left of")
            await page.screenshot(path=SHOTS / "service-after-actions.png")
            actions = [a["action"] for a in rig.state.audit]
            assert actions[-3:] == ["drain", "undrain", "weight=75"]

            for name in ("agents", "propagation", "events"):
                await page.goto(f"{rig.base_url}/{name}")
                await expect(page.locator("h1")).to_be_visible()
                await page.screenshot(path=SHOTS / f"{name}.png")
        finally:
            await browser.close()
