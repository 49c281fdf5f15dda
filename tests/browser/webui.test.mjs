// The chat page of a real `moela serve` in a real headless Chromium (Debian's package), driven
// by playwright-core: load, send, a streamed answer, Stop mid-stream (the server cancels), the
// conversation kept across a reload, new chat / delete, the API key, model output as text only,
// and reasoning in a collapsed block.
//
// The binary is $MOELA_BIN, else target/debug/moela; the browser $CHROMIUM, else /usr/bin/chromium.
// MOELA_WEBUI_SCREENSHOT=FILE.png also saves a screenshot of the first answer (docs/webui.png).
// Run: npm ci --prefix tests/browser && node --test tests/browser/webui.test.mjs

import { after, before, test } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const BIN = process.env.MOELA_BIN || path.join(ROOT, "target/debug/moela");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const KEY = "sk-browser-test";
// Without these, Chromium on a machine with no network stalls on start-up work.
const CHROMIUM_ARGS = [
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

/** One `moela serve` on 127.0.0.1 with a free port. */
async function startServer(args) {
  assert.ok(fs.existsSync(BIN), `moela binary not found at ${BIN}: run \`cargo build\` or set MOELA_BIN`);
  const proc = spawn(BIN, ["serve", "--host", "127.0.0.1", "--port", "0", ...args], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  const url = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("moela serve did not start:\n" + log)), 60_000);
    proc.stderr.on("data", (d) => {
      log += d;
      const m = log.match(/http:\/\/127\.0\.0\.1:(\d+)/);
      if (m) {
        clearTimeout(timer);
        resolve(`http://127.0.0.1:${m[1]}`);
      }
    });
    proc.on("exit", (code) => reject(new Error(`moela serve exited (${code}):\n${log}`)));
  });
  const stop = async () => {
    if (proc.exitCode !== null) return proc.exitCode;
    const exited = new Promise((resolve) => proc.on("exit", resolve));
    proc.kill("SIGTERM");
    const timer = setTimeout(() => proc.kill("SIGKILL"), 30_000);
    const code = await exited;
    clearTimeout(timer);
    return code;
  };
  return { url, stop, log: () => log };
}

/** Prometheus samples: name with labels → value. */
async function metrics(url) {
  const text = await (await fetch(url + "/metrics")).text();
  const out = new Map();
  for (const line of text.split("\n")) {
    if (line === "" || line.startsWith("#")) continue;
    const i = line.lastIndexOf(" ");
    out.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return out;
}

async function eventually(what, f, timeoutMs = 20_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await f();
    if (v) return v;
    assert.ok(Date.now() < deadline, "timed out waiting for " + what);
    await new Promise((r) => setTimeout(r, 50));
  }
}

let browser;

before(async () => {
  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROMIUM_ARGS });
});

after(async () => {
  await browser?.close();
});

/** A fresh profile (so empty storage) and the page; collects script errors and CSP reports. */
async function openPage(url) {
  const context = await browser.newContext({ viewport: { width: 1100, height: 700 } });
  const page = await context.newPage();
  const problems = [];
  page.on("pageerror", (e) => problems.push("page error: " + e.message));
  page.on("console", (m) => {
    // A failed API call (401) is logged by Chromium too; anything else is a problem.
    if (m.type() === "error" && !m.text().includes("the server responded with a status of 401")) {
      problems.push("console: " + m.text());
    }
  });
  const resp = await page.goto(url + "/");
  assert.equal(resp.status(), 200);
  assert.match(resp.headers()["content-security-policy"], /script-src 'self'/);
  return { context, page, problems };
}

/** Records the length of the last answer's text at every DOM change of the message list. */
async function recordGrowth(page) {
  await page.evaluate(() => {
    window.__lengths = [];
    const box = document.getElementById("messages");
    new MutationObserver(() => {
      const bodies = box.querySelectorAll(".msg.assistant .body");
      const last = bodies[bodies.length - 1];
      window.__lengths.push(last ? last.textContent.length : 0);
    }).observe(box, { subtree: true, childList: true, characterData: true });
  });
}

const lastAnswer = (page) => page.locator(".msg.assistant").last();

async function setField(page, id, value) {
  await page.fill("#" + id, value);
  await page.dispatchEvent("#" + id, "change");
}

async function sendMessage(page, text) {
  await page.fill("#input", text);
  await page.press("#input", "Enter");
}

async function waitIdle(page) {
  await page.locator("#send").waitFor({ state: "visible", timeout: 90_000 });
}

test("load, stream, stop mid-stream, reload, new chat, delete, key, text-only output", { timeout: 240_000 }, async () => {
  const server = await startServer(["--api-key", KEY, "--ctx", "2048", "--max-batch", "4"]);
  try {
    const { page, context, problems } = await openPage(server.url);
    assert.equal(await page.title(), "Moela chat");
    await page.click("#settings summary");
    await setField(page, "api_key", KEY);
    // With the key, the page shows the served model's name.
    await page.locator("#model-name", { hasText: "moela-demo" }).waitFor();
    await setField(page, "system", "You are a helpful assistant.");
    await setField(page, "temperature", "0");
    await setField(page, "max_tokens", "100");

    // 1. An answer in full, with its usage and speed.
    await recordGrowth(page);
    await sendMessage(page, "Write a Python function that reverses a string.");
    await waitIdle(page);
    const meta = await lastAnswer(page).locator(".meta").textContent();
    const usage = meta.match(/(\d+) prompt \+ (\d+) tokens/);
    assert.ok(usage, meta);
    assert.ok(Number(usage[2]) >= 3 && Number(usage[2]) <= 100, meta);
    assert.match(meta, /s to first token/);
    assert.match(meta, /[\d.]+ tok\/s/);
    const answer = await lastAnswer(page).locator(".body").textContent();
    const shown = await page.evaluate(() => window.__lengths.filter((n) => n > 0));
    assert.ok(answer.length > 0);
    assert.equal(shown[shown.length - 1], answer.length);
    assert.equal(await lastAnswer(page).locator("details.reasoning").isHidden(), true);
    if (process.env.MOELA_WEBUI_SCREENSHOT) {
      await page.screenshot({ path: process.env.MOELA_WEBUI_SCREENSHOT });
    }

    // 2. A long answer (the built-in model rambles on this prompt): streamed, its text grows
    // over several DOM updates while the request runs; Stop ends it mid-stream, it stops
    // growing, and the server cancels the request.
    const before = await metrics(server.url);
    const cancelled = 'moela_key_requests_total{key="default",outcome="cancelled"}';
    assert.equal(before.get(cancelled) ?? 0, 0);
    await setField(page, "max_tokens", "1800");
    await recordGrowth(page);
    await sendMessage(page, "Que fait la commande ls ?");
    await eventually("several streamed updates", () =>
      page.evaluate(() => new Set(window.__lengths.filter((n) => n > 0)).size >= 3),
    );
    assert.equal(await page.locator("#stop").isVisible(), true, "the answer ended before Stop");
    await page.click("#stop");
    await waitIdle(page);
    const growth = await page.evaluate(() => window.__lengths.filter((n) => n > 0));
    assert.ok(growth.every((n, i) => i === 0 || n >= growth[i - 1]), `${growth}`);
    const stopped = await lastAnswer(page).locator(".body").textContent();
    assert.equal(growth[growth.length - 1], stopped.length);
    assert.match(await lastAnswer(page).locator(".meta").textContent(), /stopped/);
    await eventually("the request billed as cancelled", async () => {
      const m = await metrics(server.url);
      return m.get(cancelled) === 1 && m.get("moela_running_sequences") === 0;
    });
    const m1 = await metrics(server.url);
    await page.waitForTimeout(700);
    const m2 = await metrics(server.url);
    assert.equal(await lastAnswer(page).locator(".body").textContent(), stopped, "still growing after Stop");
    const generated = "moela_generation_tokens_total";
    assert.equal(m2.get(generated), m1.get(generated), "the server still generates");
    // Far fewer tokens than asked for were generated in all.
    assert.ok(m2.get(generated) - (before.get(generated) ?? 0) < 1800);

    // 3. A reload keeps the conversation (localStorage), the settings and the key (this tab).
    await page.reload();
    await page.locator(".msg").first().waitFor();
    assert.equal(await page.locator("#chat-list .chat").count(), 1);
    const users = await page.locator(".msg.user .body").allTextContents();
    assert.deepEqual(users, ["Write a Python function that reverses a string.", "Que fait la commande ls ?"]);
    const answers = await page.locator(".msg.assistant .body").allTextContents();
    assert.deepEqual(answers, [answer, stopped]);
    assert.match(await lastAnswer(page).locator(".meta").textContent(), /stopped/);
    assert.equal(await page.inputValue("#max_tokens"), "1800");
    assert.equal(await page.inputValue("#system"), "You are a helpful assistant.");
    assert.equal(await page.inputValue("#api_key"), KEY);
    const title = await page.locator("#chat-list .chat .open").first().textContent();
    assert.equal(title, "Write a Python function that reverses a string.".slice(0, 48));

    // 4. A new chat; without the key the API refuses and the page says so.
    await page.click("#settings summary");
    await page.click("#new-chat");
    assert.equal(await page.locator("#chat-list .chat").count(), 2);
    assert.equal(await page.locator(".msg").count(), 0);
    await setField(page, "max_tokens", "4");
    await setField(page, "api_key", "");
    await sendMessage(page, "Hello");
    await waitIdle(page);
    assert.match(await lastAnswer(page).locator(".error").textContent(), /API key/);

    // 5. With the key again: markup typed by the user (and any the model writes) stays text.
    await setField(page, "api_key", KEY);
    const markup = '<img src="/x" id="injected"><b>bold</b>';
    await sendMessage(page, markup);
    await waitIdle(page);
    assert.equal(await page.locator(".msg.user .body").last().textContent(), markup);
    assert.equal(await page.locator("#messages img, #messages b").count(), 0);
    assert.equal(await lastAnswer(page).locator(".error").isHidden(), true);

    // 6. Deleting the first conversation keeps the other, across a reload.
    await page.locator("#chat-list .chat", { hasText: "Write a Python" }).locator(".delete").click();
    assert.equal(await page.locator("#chat-list .chat").count(), 1);
    await page.reload();
    await page.locator(".msg").first().waitFor();
    assert.equal(await page.locator("#chat-list .chat").count(), 1);
    const kept = await page.locator(".msg.user .body").allTextContents();
    assert.deepEqual(kept, ["Hello", markup]);

    assert.deepEqual(problems, []);
    await context.close();
  } finally {
    const code = await server.stop();
    assert.equal(code, 0, server.log());
  }
});

test("reasoning streams into a collapsed block, equal to the API's answer", { timeout: 120_000 }, async () => {
  // The tiny V3 checkpoint with DeepSeek R1's chat template: its prompt opens `<think>`, so the
  // random weights' output is all reasoning (`reasoning_content`) until a `</think>`.
  const fixture = path.join(ROOT, "tests/fixtures/models/v3");
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "moela-r1-"));
  for (const f of ["config.json", "model.safetensors", "tokenizer.json"]) {
    fs.symlinkSync(path.join(fixture, f), path.join(dir, f));
  }
  const cfg = JSON.parse(fs.readFileSync(path.join(fixture, "tokenizer_config.json"), "utf8"));
  cfg.chat_template = fs.readFileSync(path.join(ROOT, "tests/fixtures/text/templates/deepseek-r1.jinja"), "utf8");
  fs.writeFileSync(path.join(dir, "tokenizer_config.json"), JSON.stringify(cfg));
  const server = await startServer(["--model", dir]);
  try {
    const { page, context, problems } = await openPage(server.url);
    await page.click("#settings summary");
    await setField(page, "temperature", "0");
    await setField(page, "max_tokens", "16");
    await sendMessage(page, "Hi");
    await waitIdle(page);

    const reasoning = lastAnswer(page).locator("details.reasoning");
    assert.equal(await reasoning.isVisible(), true);
    assert.equal(await reasoning.evaluate((d) => d.open), false, "the reasoning starts collapsed");
    const shown = await reasoning.locator(".text").textContent();
    const content = await lastAnswer(page).locator(".body").textContent();
    await reasoning.locator("summary").click();
    assert.equal(await reasoning.evaluate((d) => d.open), true);

    const resp = await fetch(server.url + "/v1/chat/completions", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ messages: [{ role: "user", content: "Hi" }], temperature: 0, max_tokens: 16 }),
    });
    const msg = (await resp.json()).choices[0].message;
    assert.ok(msg.reasoning_content.length > 0);
    assert.equal(shown, msg.reasoning_content);
    assert.equal(content, msg.content);

    assert.deepEqual(problems, []);
    await context.close();
  } finally {
    assert.equal(await server.stop(), 0, server.log());
    fs.rmSync(dir, { recursive: true, force: true });
  }
});
