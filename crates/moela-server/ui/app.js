// Moela's chat page: a client of POST /v1/chat/completions (stream: true).
// Model output is only ever set as text (Text nodes, textContent), never parsed as HTML.
// Conversations and settings live in localStorage; the API key in sessionStorage (this tab).
"use strict";

(() => {
  const CHATS = "moela.chats";
  const CURRENT = "moela.current";
  const SETTINGS = "moela.settings";
  const API_KEY = "moela.api_key";
  const FIELDS = ["system", "temperature", "top_p", "max_tokens", "thinking"];

  const $ = (id) => document.getElementById(id);
  const ui = {
    list: $("chat-list"),
    messages: $("messages"),
    composer: $("composer"),
    input: $("input"),
    send: $("send"),
    stop: $("stop"),
    status: $("status"),
    model: $("model-name"),
    apiKey: $("api_key"),
  };

  // ------------------------------------------------------------ storage

  // Storage can be disabled or full: reads fall back, writes report on the status line.
  function getItem(storage, key) {
    try {
      return storage.getItem(key);
    } catch (_) {
      return null;
    }
  }

  function setItem(storage, key, value) {
    try {
      if (value === null) storage.removeItem(key);
      else storage.setItem(key, value);
    } catch (e) {
      setStatus("could not save: " + e.message);
    }
  }

  function readJson(storage, key, fallback) {
    try {
      const v = JSON.parse(getItem(storage, key));
      return v === null || v === undefined ? fallback : v;
    } catch (_) {
      return fallback;
    }
  }

  function isMessage(m) {
    return m && (m.role === "user" || m.role === "assistant") && typeof m.content === "string";
  }

  /** Conversations as stored, keeping only well-formed ones. */
  function loadChats() {
    const raw = readJson(localStorage, CHATS, []);
    if (!Array.isArray(raw)) return [];
    return raw
      .filter((c) => c && typeof c.id === "string" && Array.isArray(c.messages))
      .map((c) => ({
        id: c.id,
        title: typeof c.title === "string" ? c.title : "",
        updated: Number(c.updated) || 0,
        messages: c.messages.filter(isMessage),
      }));
  }

  let chats = loadChats();
  let currentId = getItem(localStorage, CURRENT);
  /** The request in flight: { chat, answer, view, controller } or null. */
  let running = null;

  function saveChats() {
    setItem(localStorage, CHATS, JSON.stringify(chats));
    setItem(localStorage, CURRENT, currentId);
  }

  function loadSettings() {
    const s = readJson(localStorage, SETTINGS, {});
    for (const f of FIELDS) {
      if (typeof s[f] === "string") $(f).value = s[f];
    }
    ui.apiKey.value = getItem(sessionStorage, API_KEY) || "";
  }

  function saveSettings() {
    const s = {};
    for (const f of FIELDS) s[f] = $(f).value;
    setItem(localStorage, SETTINGS, JSON.stringify(s));
    setItem(sessionStorage, API_KEY, ui.apiKey.value || null);
  }

  // ------------------------------------------------------------ rendering

  function setStatus(text) {
    ui.status.textContent = text;
  }

  function currentChat() {
    return chats.find((c) => c.id === currentId) || null;
  }

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined) e.textContent = text;
    return e;
  }

  function renderList() {
    ui.list.replaceChildren();
    const sorted = [...chats].sort((a, b) => b.updated - a.updated);
    for (const c of sorted) {
      const li = el("li", c.id === currentId ? "chat current" : "chat");
      const open = el("button", "open", c.title || "New chat");
      open.type = "button";
      open.title = c.title || "New chat";
      open.addEventListener("click", () => selectChat(c.id));
      const del = el("button", "delete", "\u00d7");
      del.type = "button";
      del.title = "Delete this conversation";
      del.setAttribute("aria-label", "Delete conversation");
      del.addEventListener("click", () => deleteChat(c.id));
      li.append(open, del);
      ui.list.append(li);
    }
  }

  /** The DOM of one message; its text lives in Text nodes so that streaming appends. */
  function messageView(m) {
    const root = el("div", "msg " + m.role);
    root.append(el("div", "role", m.role === "user" ? "You" : "Assistant"));
    const reasoning = el("details", "reasoning");
    const summary = el("summary", null, "Reasoning");
    const reasoningBody = el("div", "text");
    const reasoningText = document.createTextNode(m.reasoning || "");
    reasoningBody.append(reasoningText);
    reasoning.append(summary, reasoningBody);
    reasoning.hidden = !m.reasoning;
    const body = el("div", "text body");
    const text = document.createTextNode(m.content);
    body.append(text);
    const error = el("div", "error", m.error || "");
    error.hidden = !m.error;
    const meta = el("div", "meta", m.stats || "");
    root.append(reasoning, body, error, meta);
    return { root, reasoning, summary, reasoningText, text, error, meta };
  }

  function renderChat() {
    const chat = currentChat();
    ui.messages.replaceChildren();
    if (!chat || chat.messages.length === 0) {
      ui.messages.append(el("p", "empty", "Ask something. The answer streams in as it is generated."));
      return;
    }
    for (const m of chat.messages) {
      const view = messageView(m);
      if (running && running.answer === m) {
        running.view = view;
        view.root.classList.add("streaming");
      }
      ui.messages.append(view.root);
    }
    ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  function setBusy(busy) {
    ui.send.hidden = busy;
    ui.send.disabled = busy;
    ui.stop.hidden = !busy;
    ui.stop.disabled = !busy;
  }

  // ------------------------------------------------------------ conversations

  function newId() {
    const a = new Uint32Array(2);
    crypto.getRandomValues(a);
    return Date.now().toString(36) + a[0].toString(36) + a[1].toString(36);
  }

  function newChat() {
    const chat = { id: newId(), title: "", updated: Date.now(), messages: [] };
    chats.push(chat);
    currentId = chat.id;
    saveChats();
    renderList();
    renderChat();
    ui.input.focus();
    return chat;
  }

  function selectChat(id) {
    currentId = id;
    saveChats();
    renderList();
    renderChat();
  }

  function deleteChat(id) {
    if (running && running.chat.id === id) running.controller.abort();
    chats = chats.filter((c) => c.id !== id);
    if (currentId === id) {
      const next = [...chats].sort((a, b) => b.updated - a.updated)[0];
      currentId = next ? next.id : null;
    }
    saveChats();
    renderList();
    renderChat();
  }

  // ------------------------------------------------------------ the request

  function number(id, parse) {
    const v = $(id).value.trim();
    if (v === "") return undefined;
    const n = parse(v);
    return Number.isFinite(n) ? n : undefined;
  }

  /** The request body: the system prompt, then the conversation without failed answers. */
  function requestBody(chat) {
    const messages = [];
    const system = $("system").value;
    if (system.trim() !== "") messages.push({ role: "system", content: system });
    for (const m of chat.messages) {
      if (m === running?.answer) continue;
      if (m.role === "assistant" && m.content === "") continue;
      messages.push({ role: m.role, content: m.content });
    }
    const body = { messages, stream: true, stream_options: { include_usage: true } };
    const temperature = number("temperature", parseFloat);
    const topP = number("top_p", parseFloat);
    const maxTokens = number("max_tokens", (v) => parseInt(v, 10));
    if (temperature !== undefined) body.temperature = temperature;
    if (topP !== undefined) body.top_p = topP;
    if (maxTokens !== undefined) body.max_tokens = maxTokens;
    const thinking = $("thinking").value;
    if (thinking) body.thinking = { type: thinking };
    return body;
  }

  function headers() {
    const h = { "Content-Type": "application/json" };
    const key = ui.apiKey.value.trim();
    if (key) h.Authorization = "Bearer " + key;
    return h;
  }

  /** Calls `onData` with each event's data until `[DONE]` or the end of the body. */
  async function readEvents(body, onData) {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += decoder.decode(value, { stream: true }).replace(/\r/g, "");
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        const data = event
          .split("\n")
          .filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).replace(/^ /, ""))
          .join("\n");
        if (data === "") continue; // a comment (keep-alive)
        if (data === "[DONE]") {
          reader.cancel().catch(() => {});
          return;
        }
        onData(data);
      }
    }
  }

  async function errorMessage(resp) {
    let msg = resp.status + " " + resp.statusText;
    try {
      const v = JSON.parse(await resp.text());
      if (v && v.error && v.error.message) msg = v.error.message;
    } catch (_) {
      // not JSON: keep the status line
    }
    if (resp.status === 401) msg += " (set the API key under Settings)";
    return msg;
  }

  function stats(answer, usage, times) {
    const parts = [];
    if (usage) {
      parts.push(usage.prompt_tokens + " prompt + " + usage.completion_tokens + " tokens");
    }
    if (times.first !== null) {
      parts.push(((times.first - times.start) / 1000).toFixed(2) + " s to first token");
      const n = usage ? usage.completion_tokens - 1 : 0;
      const secs = (times.end - times.first) / 1000;
      if (n > 0 && secs > 0) parts.push((n / secs).toFixed(1) + " tok/s");
    }
    if (answer.stopped) parts.push("stopped");
    else if (answer.finish === "length") parts.push("cut at max tokens");
    return parts.join(" \u00b7 ");
  }

  function append(node, delta) {
    const box = ui.messages;
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 48;
    node.appendData(delta);
    if (atBottom) box.scrollTop = box.scrollHeight;
  }

  async function send(text) {
    const chat = currentChat() || newChat();
    chat.messages.push({ role: "user", content: text });
    if (!chat.title) chat.title = text.replace(/\s+/g, " ").trim().slice(0, 48);
    const answer = { role: "assistant", content: "", reasoning: "" };
    chat.messages.push(answer);
    chat.updated = Date.now();
    running = { chat, answer, view: null, controller: new AbortController() };
    saveChats();
    renderList();
    renderChat();
    setBusy(true);
    setStatus("generating\u2026");

    const times = { start: performance.now(), first: null, end: null };
    let usage = null;
    const body = requestBody(chat);
    try {
      const resp = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: headers(),
        body: JSON.stringify(body),
        signal: running.controller.signal,
      });
      if (!resp.ok) throw new Error(await errorMessage(resp));
      await readEvents(resp.body, (data) => {
        const chunk = JSON.parse(data);
        if (chunk.error) throw new Error(chunk.error.message || "the server reported an error");
        if (chunk.usage) usage = chunk.usage;
        const choice = chunk.choices && chunk.choices[0];
        if (!choice) return;
        const d = choice.delta || {};
        const view = running.view;
        if (d.reasoning_content) {
          answer.reasoning += d.reasoning_content;
          if (view) {
            view.reasoning.hidden = false;
            append(view.reasoningText, d.reasoning_content);
          }
        }
        if (d.content) {
          answer.content += d.content;
          if (view) append(view.text, d.content);
        }
        if ((d.content || d.reasoning_content) && times.first === null) times.first = performance.now();
        if (choice.finish_reason) answer.finish = choice.finish_reason;
      });
    } catch (e) {
      if (e.name === "AbortError") {
        answer.stopped = true;
      } else {
        answer.error = e.message || String(e);
        running.controller.abort(); // stop reading (and generating) after a bad event
      }
    }
    times.end = performance.now();
    answer.stats = stats(answer, usage, times);
    const view = running.view;
    running = null;
    if (view) {
      view.root.classList.remove("streaming");
      view.meta.textContent = answer.stats;
      view.error.textContent = answer.error || "";
      view.error.hidden = !answer.error;
    }
    chat.updated = Date.now();
    saveChats();
    setBusy(false);
    setStatus(answer.error ? "error" : answer.stopped ? "stopped" : "");
  }

  // ------------------------------------------------------------ the model's name

  async function showModel() {
    try {
      const resp = await fetch("/v1/models", { headers: headers() });
      if (!resp.ok) return;
      const v = await resp.json();
      const id = v && v.data && v.data[0] && v.data[0].id;
      if (typeof id === "string") {
        ui.model.textContent = id;
        document.title = id + " \u2014 Moela chat";
      }
    } catch (_) {
      // the name is decoration; the chat works without it
    }
  }

  // ------------------------------------------------------------ events

  ui.composer.addEventListener("submit", (e) => {
    e.preventDefault();
    const text = ui.input.value;
    if (running || text.trim() === "") return;
    ui.input.value = "";
    send(text);
  });
  ui.input.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      ui.composer.requestSubmit();
    }
  });
  ui.stop.addEventListener("click", () => {
    if (running) running.controller.abort();
  });
  $("new-chat").addEventListener("click", () => newChat());
  for (const f of FIELDS) $(f).addEventListener("change", saveSettings);
  ui.apiKey.addEventListener("change", () => {
    saveSettings();
    showModel();
  });

  // Leaving the page ends the request; keep what had arrived.
  window.addEventListener("pagehide", () => {
    if (!running) return;
    running.answer.stopped = true;
    saveChats();
  });

  loadSettings();
  if (!currentChat()) currentId = chats.length ? chats[chats.length - 1].id : null;
  renderList();
  renderChat();
  setBusy(false);
  showModel();
})();
