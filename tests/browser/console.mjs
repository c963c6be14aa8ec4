// The officer's console in a real headless Chromium (Debian's), driven by
// Playwright over the DevTools protocol, for tests/console_browser.rs.
//
//   node console.mjs LOGIN_URL SCREENSHOT_DIR
//
// It talks with the Rust test line by line: it prints `ready` once the
// page is up and waits for `published ID XSS_ID` on standard input (the
// test publishes as another node), checks the alert appears live, opens it,
// acknowledges it and prints `acked ID`, switches to Russian, composes an
// alert with a bad field, takes the screenshots, and prints `done {json}`
// with what it measured. Any failure exits non-zero with the reason.

import { chromium } from "playwright-core";
import { createInterface } from "node:readline";

const [loginUrl, shots] = process.argv.slice(2);
const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
const say = (line) => console.log(line);
const step = (what) => console.error(`step: ${what}`);
class Failed extends Error {}
const fail = (why) => {
  throw new Failed(why);
};

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
  ],
});
try {
  const context = await browser.newContext({ viewport: { width: 1400, height: 900 }, locale: "en-GB", timezoneId: "Asia/Dushanbe" });
  const page = await context.newPage();
  const problems = [];
  page.on("dialog", (d) => problems.push(`a dialog opened: ${d.message()}`));
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  // A refused submit is a 400 the page shows; anything else failing is a problem.
  page.on("console", (m) => m.type() === "error" && !m.text().includes("status of 400") && problems.push(`console error: ${m.text()}`));
  page.on("response", (r) => {
    const expected = r.status() === 400 && r.request().method() === "POST" && r.url().endsWith("/api/alerts");
    if (r.status() >= 400 && !expected) problems.push(`${r.status()} for ${r.url()}`);
  });
  const external = [];
  page.on("request", (r) => {
    const u = new URL(r.url());
    if (!["127.0.0.1", "localhost"].includes(u.hostname) && u.protocol !== "data:") external.push(r.url());
  });

  step("open the login address");
  const t0 = Date.now();
  await page.goto(loginUrl);
  if (new URL(page.url()).search.includes("token")) fail("the token is still in the address");
  await page.waitForSelector("header h1", { timeout: 10000 });
  await page.waitForSelector("#map path.leaflet-interactive", { state: "attached", timeout: 10000 });
  await page.waitForFunction(() => document.querySelector("#status .ok"), null, { timeout: 10000 });
  const pageLoadMs = Date.now() - t0;

  step("the page is up");
  say("ready");
  const { value: line } = await lines.next();
  const [, id, xssId] = (line || "").trim().split(/\s+/);
  if (!id) fail(`expected "published ID XSS_ID", got ${line}`);
  step("wait for the alert, live");
  const tPublished = Date.now();
  const row = page.locator(`.row[data-id="${id}"]`);
  await row.waitFor({ timeout: 5000 });
  const liveMs = Date.now() - tPublished;

  step("check the markup stays text");
  // Another agency's markup is shown as text and does nothing.
  const xssRow = page.locator(`.row[data-id="${xssId}"] .headline`);
  await xssRow.waitFor({ timeout: 5000 });
  const xssText = await xssRow.textContent();
  if (xssText !== "<img src=x onerror=alert(1)>") fail(`the headline shows as ${JSON.stringify(xssText)}`);
  if ((await page.locator('img[src="x"]').count()) > 0) fail("the headline became an <img>");
  if (!(await page.locator(`.row[data-id="${id}"].unread`).count())) fail("a new alert is not marked unread");
  const unread = await page.locator("#unread").textContent();
  await page.screenshot({ path: `${shots}/console-feed.png` });

  step("open the alert");
  // Open it: the detail, its area on the map.
  await row.click();
  await page.waitForSelector("#detail article h2", { timeout: 5000 });
  const heading = await page.locator("#detail article h2").textContent();
  await page.locator("#detail").getByText("TLP:AMBER — the recipient's organisation only").waitFor();
  await page.locator("#detail td", { hasText: "seizure_kg" }).waitFor();
  await page.waitForTimeout(400); // the map's zoom animation
  await page.screenshot({ path: `${shots}/console-detail.png` });

  step("acknowledge");
  // Acknowledge it, with a note.
  await page.fill("#ack-note", "Patrol informed at Sher Khan Bandar");
  await page.click("#ack");
  await page.locator("#ack-result", { hasText: "Acknowledged" }).waitFor({ timeout: 5000 });
  say(`acked ${id}`);
  await lines.next(); // the test checked the receipt at the broker

  step("switch to Russian");
  // Russian, every label switched.
  await page.click("#lang");
  await page.locator('nav [data-tab="feed"]', { hasText: "Лента" }).waitFor();
  const russianTabs = await page.locator("nav [role=tab]").allTextContents();
  if (russianTabs.join("|") !== "Лента|Поиск|Новое оповещение") fail(`tabs in Russian: ${russianTabs}`);
  const titleRu = await page.locator("header h1").textContent();
  if (titleRu !== "Консоль Liaison") fail(`title in Russian: ${titleRu}`);
  await page.click("#lang"); // back to English for the compose screenshot

  step("compose with a bad field");
  // Compose with a bad field: the broker's refusal shows by the field.
  await page.click('nav [data-tab="compose"]');
  await page.selectOption("#compose-category", "arms");
  await page.fill("#compose-headline", "");
  await page.fill("#compose-description", "Three rifles under a load of melons.");
  await page.fill('#compose-form input[name="latitude"]', "37.12");
  await page.fill('#compose-form input[name="longitude"]', "68.83");
  await page.click("#compose-send");
  const error = page.locator('.field[data-field="headline"] .field-error');
  await error.waitFor({ timeout: 5000 });
  await page.waitForFunction(() => document.querySelector('.field[data-field="headline"] .field-error').textContent.length > 0);
  const errorText = await error.textContent();
  if (!errorText.includes("alert.headline")) fail(`the error by the headline: ${errorText}`);
  const kept = await page.inputValue("#compose-description");
  if (kept !== "Three rifles under a load of melons.") fail("the form lost what was typed");
  await page.screenshot({ path: `${shots}/console-compose.png` });
  step("fix and send");
  // Then fixed and sent.
  await page.fill("#compose-headline", "Rifles under a load of melons");
  await page.click("#compose-send");
  await page.locator("#compose-result", { hasText: "Published" }).waitFor({ timeout: 5000 });

  if (problems.length) fail(problems.join("; "));
  if (external.length) fail(`requests left the machine: ${external.join(", ")}`);
  say(`done ${JSON.stringify({ pageLoadMs, liveMs, unread, heading })}`);
} catch (e) {
  console.error(`FAILED: ${e instanceof Failed ? e.message : e && e.stack ? e.stack : e}`);
  process.exitCode = 1;
} finally {
  await browser.close();
}
// Standard input is still open (the test's end of it): exit now.
process.exit(process.exitCode ?? 0);
