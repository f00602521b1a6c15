// Runs one interop scenario in Debian's headless firefox-esr, driven through WebDriver BiDi by
// puppeteer-core (never a downloaded browser), against our server's page:
//
//   node run.js PAGE_URL WS_URL SCENARIO
//
// loads PAGE_URL (our server serves payloads.js, interop_client.js and browser_client.js there),
// runs window.interop[SCENARIO](WS_URL) and prints its report, with the browser's version, as one
// JSON line. Firefox offers permessage-deflate on every connection (it has no setting to turn the
// offer off any more); the plain tests' server declines it. Every step is bounded; the whole run
// is killed after RUN_MS. Exit status 0 once a report is printed.
"use strict";

const os = require("os");
const fs = require("fs");
const path = require("path");
const puppeteer = require("puppeteer-core");

const FIREFOX = process.env.INTEROP_FIREFOX || "/usr/bin/firefox-esr";
const STEP_MS = 30000;
const RUN_MS = 50000;

async function main() {
  const [pageUrl, wsUrl, scenario] = process.argv.slice(2);
  if (!pageUrl || !wsUrl || !scenario) throw new Error("usage: node run.js PAGE_URL WS_URL SCENARIO");
  const profile = fs.mkdtempSync(path.join(os.tmpdir(), "interop-firefox-"));
  const browser = await puppeteer.launch({
    browser: "firefox",
    executablePath: FIREFOX,
    headless: true,
    userDataDir: profile,
    timeout: STEP_MS,
    extraPrefsFirefox: {
      "browser.shell.checkDefaultBrowser": false,
      "datareporting.policy.dataSubmissionEnabled": false,
      "app.update.enabled": false,
    },
  });
  try {
    const version = await browser.version();
    const page = await browser.newPage();
    const console_ = [];
    page.on("console", (m) => console_.push(m.text()));
    await page.goto(pageUrl, { timeout: STEP_MS });
    await page.waitForFunction("window.interop !== undefined", { timeout: STEP_MS });
    let report;
    try {
      report = await page.evaluate((name, url) => window.interop[name](url), scenario, wsUrl);
    } catch (err) {
      report = { error: String(err) + "; console: " + JSON.stringify(console_) };
    }
    report.browser = version;
    process.stdout.write(JSON.stringify(report) + "\n");
  } finally {
    await browser.close();
    fs.rmSync(profile, { recursive: true, force: true });
  }
}

const killer = setTimeout(() => {
  process.stdout.write(JSON.stringify({ error: `firefox run.js: no report within ${RUN_MS} ms` }) + "\n");
  process.exit(2);
}, RUN_MS);
killer.unref();

main().then(
  () => process.exit(0),
  (err) => {
    process.stdout.write(JSON.stringify({ error: "firefox run.js: " + (err && err.stack ? err.stack : err) }) + "\n");
    process.exit(1);
  },
);
