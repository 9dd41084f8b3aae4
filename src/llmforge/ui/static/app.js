/*
 * LLMForge chat page. Talks to the gateway like any client: models from GET /v1/models, answers streamed
 * from POST /v1/chat/completions (SSE), history kept through /api/conversations. No framework, no build
 * step; Markdown is rendered with the vendored marked and sanitized with DOMPurify before it touches the DOM.
 */
(function () {
  "use strict";

  const MODEL_KEY = "llmforge.chat.model";
  const $ = (id) => document.getElementById(id);
  const el = {
    layout: $("layout"),
    sidebar: $("sidebar"),
    scrim: $("scrim"),
    toggleSidebar: $("toggle-sidebar"),
    newChat: $("new-chat"),
    conversations: $("conversations"),
    conversationsEmpty: $("conversations-empty"),
    title: $("chat-title"),
    model: $("model-select"),
    apiKey: $("api-key"),
    error: $("error"),
    errorText: $("error-text"),
    errorClose: $("error-close"),
    messages: $("messages"),
    empty: $("empty"),
    composer: $("composer"),
    prompt: $("prompt"),
    send: $("send"),
    stop: $("stop"),
  };

  const state = {
    conversations: [], // summaries, newest activity first
    active: null, // {id, title, model, messages: [...]} or null for an unsaved new chat
    streaming: null, // {controller, conversationId} while an answer streams
  };

  // -- HTTP -------------------------------------------------------------------------------------------

  async function errorMessage(resp) {
    let text = "";
    try {
      text = await resp.text();
    } catch (_) {
      /* body unreadable: fall back to the status line */
    }
    try {
      const body = JSON.parse(text);
      if (body && body.error && body.error.message) {
        const hint = resp.status === 401 ? " Set your API key with the key button at the top." : "";
        return body.error.message + hint;
      }
      if (body && body.detail) return String(body.detail);
    } catch (_) {
      /* not JSON */
    }
    const status = `The server answered ${resp.status}${resp.statusText ? " " + resp.statusText : ""}`;
    return text ? `${status}: ${text.slice(0, 300)}` : status;
  }

  function networkError(err) {
    return new Error(`Network error: the server cannot be reached (${err.message || err}).`);
  }

  // API key (only needed when the server has a master key): kept in this browser only.
  const KEY_STORAGE = "llmforge.apiKey";
  function authHeaders(headers) {
    const key = localStorage.getItem(KEY_STORAGE);
    if (key) headers.Authorization = `Bearer ${key}`;
    return headers;
  }

  async function api(method, path, body) {
    const init = { method, headers: authHeaders({ Accept: "application/json" }) };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let resp;
    try {
      resp = await fetch(path, init);
    } catch (err) {
      throw networkError(err);
    }
    if (!resp.ok) throw new Error(await errorMessage(resp));
    return resp.json();
  }

  /*
   * POST a streaming chat completion and call onText for every piece of text. Resolves when the server
   * sends [DONE]; rejects with the server's message on an HTTP error, an error event or a broken stream,
   * and with an AbortError when `signal` is aborted.
   */
  async function streamChat(model, messages, signal, onText) {
    let resp;
    try {
      resp = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
        body: JSON.stringify({ model, messages, stream: true, stream_options: { include_usage: true } }),
        signal,
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw networkError(err);
    }
    if (!resp.ok) throw new Error(await errorMessage(resp));
    if (!resp.body) throw new Error("This browser cannot read streamed answers.");

    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    const result = { done: false, finishReason: null, usage: null };
    let buffer = "";
    let data = [];

    const dispatch = () => {
      if (!data.length) return;
      const payload = data.join("\n");
      data = [];
      if (payload === "[DONE]") {
        result.done = true;
        return;
      }
      let event;
      try {
        event = JSON.parse(payload);
      } catch (_) {
        throw new Error(`The server sent a malformed event: ${payload.slice(0, 120)}`);
      }
      if (event.error) {
        throw new Error(event.error.message || "The model failed while answering.");
      }
      const choice = event.choices && event.choices[0];
      if (choice && choice.delta && typeof choice.delta.content === "string" && choice.delta.content) {
        onText(choice.delta.content);
      }
      if (choice && choice.finish_reason) result.finishReason = choice.finish_reason;
      if (event.usage) result.usage = event.usage;
    };
    const line = (text) => {
      if (text.endsWith("\r")) text = text.slice(0, -1);
      if (text === "") dispatch();
      else if (text.startsWith("data:")) data.push(text.slice(5).replace(/^ /, ""));
      // comments (":") and other fields (event:, id:, retry:) carry nothing the page needs
    };

    try {
      while (!result.done) {
        let chunk;
        try {
          chunk = await reader.read();
        } catch (err) {
          if (err.name === "AbortError") throw err;
          throw new Error(`The connection broke while the answer was streaming (${err.message}).`);
        }
        if (chunk.done) break;
        buffer += decoder.decode(chunk.value, { stream: true });
        let nl;
        while (!result.done && (nl = buffer.indexOf("\n")) >= 0) {
          line(buffer.slice(0, nl));
          buffer = buffer.slice(nl + 1);
        }
      }
      if (!result.done) {
        if (buffer) line(buffer);
        dispatch();
      }
      if (!result.done) throw new Error("The answer stream ended before it was complete.");
      return result;
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  // -- rendering --------------------------------------------------------------------------------------

  const haveMarkdown = typeof window.marked !== "undefined" && typeof window.DOMPurify !== "undefined";
  if (haveMarkdown) {
    window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A" && node.getAttribute("href")) {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer");
      }
    });
  }

  function renderMarkdown(target, text) {
    if (!haveMarkdown) {
      target.textContent = text;
      target.classList.add("plain");
      return;
    }
    const html = window.marked.parse(text, { gfm: true, breaks: true });
    target.innerHTML = window.DOMPurify.sanitize(html);
  }

  function addCopyButtons(target) {
    for (const pre of target.querySelectorAll("pre")) {
      if (pre.querySelector(".copy")) continue;
      const button = document.createElement("button");
      button.type = "button";
      button.className = "copy";
      button.textContent = "Copy";
      button.addEventListener("click", async () => {
        const code = pre.querySelector("code") || pre;
        try {
          await navigator.clipboard.writeText(code.innerText);
          button.textContent = "Copied";
        } catch (_) {
          button.textContent = "Copy failed";
        }
        setTimeout(() => (button.textContent = "Copy"), 1500);
      });
      pre.appendChild(button);
    }
  }

  function nearBottom() {
    const m = el.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 120;
  }

  function scrollToBottom() {
    el.messages.scrollTop = el.messages.scrollHeight;
  }

  const ROLE_LABELS = { user: "You", assistant: "Assistant", system: "System" };

  /* A message element; returns {root, body, meta}. Assistant text is Markdown, the rest is plain text. */
  function messageElement(role, content) {
    const root = document.createElement("article");
    root.className = `message ${role}`;
    root.dataset.role = role;
    root.dataset.testid = "message";
    const label = document.createElement("div");
    label.className = "role";
    label.textContent = ROLE_LABELS[role] || role;
    const body = document.createElement("div");
    body.className = role === "assistant" ? "content markdown" : "content plain";
    const meta = document.createElement("div");
    meta.className = "meta";
    root.append(label, body, meta);
    if (role === "assistant") {
      renderMarkdown(body, content);
      addCopyButtons(body);
    } else {
      body.textContent = content;
    }
    return { root, body, meta };
  }

  function showEmpty(show) {
    el.empty.hidden = !show;
  }

  function appendMessage(role, content) {
    showEmpty(false);
    const stick = nearBottom();
    const m = messageElement(role, content);
    el.messages.appendChild(m.root);
    if (stick || role === "user") scrollToBottom();
    return m;
  }

  function renderConversation() {
    for (const node of el.messages.querySelectorAll(".message")) node.remove();
    const messages = state.active ? state.active.messages : [];
    showEmpty(messages.length === 0);
    for (const m of messages) el.messages.appendChild(messageElement(m.role, m.content).root);
    scrollToBottom();
    renderTitle();
  }

  function renderTitle() {
    const title = (state.active && state.active.title) || "New chat";
    el.title.textContent = title;
    document.title = `${title} · LLMForge`;
  }

  function timeAgo(seconds) {
    const diff = Date.now() / 1000 - seconds;
    if (diff < 60) return "just now";
    if (diff < 3600) return `${Math.floor(diff / 60)} min ago`;
    if (diff < 86400) return `${Math.floor(diff / 3600)} h ago`;
    return new Date(seconds * 1000).toLocaleDateString();
  }

  function renderSidebar() {
    el.conversations.replaceChildren();
    el.conversationsEmpty.hidden = state.conversations.length > 0;
    const activeId = state.active && state.active.id;
    for (const c of state.conversations) {
      const item = document.createElement("li");
      item.className = "conversation" + (c.id === activeId ? " active" : "");
      item.dataset.id = c.id;
      item.dataset.testid = "conversation";

      const open = document.createElement("button");
      open.type = "button";
      open.className = "conversation-open";
      const title = c.title || "Untitled";
      open.title = title;
      if (c.id === activeId) open.setAttribute("aria-current", "true");
      const name = document.createElement("span");
      name.className = "conversation-title";
      name.textContent = title;
      const info = document.createElement("span");
      info.className = "conversation-meta";
      const count = `${c.message_count} message${c.message_count === 1 ? "" : "s"}`;
      info.textContent = `${count} · ${timeAgo(c.updated_at)}`;
      open.append(name, info);
      open.addEventListener("click", () => openConversation(c.id));

      const del = document.createElement("button");
      del.type = "button";
      del.className = "conversation-delete";
      del.title = "Delete (click twice)";
      del.setAttribute("aria-label", `Delete conversation ${title}`);
      del.textContent = "×";
      del.addEventListener("click", (event) => {
        event.stopPropagation();
        if (del.dataset.confirm === "1") {
          deleteConversation(c.id);
          return;
        }
        del.dataset.confirm = "1";
        del.textContent = "Delete?";
        setTimeout(() => {
          del.dataset.confirm = "";
          del.textContent = "×";
        }, 4000);
      });

      item.append(open, del);
      el.conversations.appendChild(item);
    }
  }

  // -- errors and busy state ---------------------------------------------------------------------------

  function showError(message) {
    el.errorText.textContent = message;
    el.error.hidden = false;
  }

  function clearError() {
    el.error.hidden = true;
    el.errorText.textContent = "";
  }

  function setStreaming(on) {
    el.send.hidden = on;
    el.stop.hidden = !on;
    el.layout.classList.toggle("busy", on);
  }

  function setSidebarOpen(open) {
    el.layout.classList.toggle("sidebar-open", open);
    el.scrim.hidden = !open;
    el.toggleSidebar.setAttribute("aria-expanded", String(open));
  }

  // -- actions ----------------------------------------------------------------------------------------

  async function loadModels() {
    let body;
    try {
      body = await api("GET", "/v1/models");
    } catch (err) {
      showError(`Could not load the models: ${err.message}`);
      return;
    }
    const chat = (body.data || []).filter((m) => !m.llmforge || m.llmforge.kind === "chat");
    el.model.replaceChildren();
    if (!chat.length) {
      const option = new Option("No chat models configured", "");
      option.disabled = true;
      el.model.appendChild(option);
      el.model.disabled = true;
      showError("No chat model is configured. Add one under `models:` in llmforge.yaml.");
      return;
    }
    for (const m of chat) {
      const provider = m.llmforge && m.llmforge.provider;
      const option = new Option(m.id, m.id);
      if (provider) option.title = `${m.id} (${provider})`;
      el.model.appendChild(option);
    }
    el.model.disabled = false;
    const saved = localStorage.getItem(MODEL_KEY);
    if (saved && chat.some((m) => m.id === saved)) el.model.value = saved;
  }

  function selectModel(name) {
    if (name && [...el.model.options].some((o) => o.value === name)) el.model.value = name;
  }

  async function loadConversations() {
    try {
      const body = await api("GET", "/api/conversations");
      state.conversations = body.data || [];
    } catch (err) {
      showError(`Could not load the conversations: ${err.message}`);
      return;
    }
    renderSidebar();
  }

  function stopStreaming() {
    if (state.streaming) state.streaming.controller.abort();
  }

  function setLocation(id) {
    history.replaceState(null, "", id ? `#${encodeURIComponent(id)}` : location.pathname);
  }

  async function openConversation(id) {
    stopStreaming();
    clearError();
    let conversation;
    try {
      conversation = await api("GET", `/api/conversations/${encodeURIComponent(id)}`);
    } catch (err) {
      showError(`Could not open the conversation: ${err.message}`);
      return;
    }
    state.active = conversation;
    selectModel(conversation.model);
    setLocation(conversation.id);
    renderConversation();
    renderSidebar();
    setSidebarOpen(false);
    el.prompt.focus();
  }

  function newChat() {
    stopStreaming();
    clearError();
    state.active = null;
    setLocation(null);
    renderConversation();
    renderSidebar();
    setSidebarOpen(false);
    el.prompt.focus();
  }

  async function deleteConversation(id) {
    if (state.streaming && state.streaming.conversationId === id) stopStreaming();
    try {
      await api("DELETE", `/api/conversations/${encodeURIComponent(id)}`);
    } catch (err) {
      showError(`Could not delete the conversation: ${err.message}`);
      return;
    }
    if (state.active && state.active.id === id) newChat();
    await loadConversations();
  }

  async function send() {
    const text = el.prompt.value;
    if (!text.trim() || state.streaming) return;
    const model = el.model.value;
    if (!model) {
      showError("Pick a model first. If the list is empty, add a chat model to llmforge.yaml.");
      return;
    }
    clearError();
    const controller = new AbortController();
    state.streaming = { controller, conversationId: state.active && state.active.id };
    setStreaming(true);
    el.prompt.value = "";
    autosize();

    // 1. persist the user's message (creating the conversation on the first send)
    let conversation = state.active;
    try {
      if (!conversation) {
        conversation = await api("POST", "/api/conversations", { model });
        state.active = conversation;
        state.streaming.conversationId = conversation.id;
        setLocation(conversation.id);
      } else if (conversation.model !== model) {
        await api("PATCH", `/api/conversations/${encodeURIComponent(conversation.id)}`, { model });
        conversation.model = model;
      }
      const saved = await api(
        "POST",
        `/api/conversations/${encodeURIComponent(conversation.id)}/messages`,
        { role: "user", content: text },
      );
      conversation.messages.push(saved);
      if (!conversation.title) conversation.title = text.trim().split(/\s+/).join(" ").slice(0, 60);
    } catch (err) {
      showError(`Your message could not be saved: ${err.message}`);
      if (!el.prompt.value) el.prompt.value = text;
      autosize();
      state.streaming = null;
      setStreaming(false);
      return;
    }
    const visible = () => state.active === conversation;
    if (visible()) {
      appendMessage("user", text);
      renderTitle();
    }
    loadConversations();

    // 2. stream the answer into a new assistant message
    const history = conversation.messages.map((m) => ({ role: m.role, content: m.content }));
    const answer = visible() ? appendMessage("assistant", "") : messageElement("assistant", "");
    answer.root.classList.add("streaming");
    answer.root.setAttribute("aria-busy", "true"); // screen readers wait for the finished answer
    let reply = "";
    let pending = false;
    const paint = () => {
      pending = false;
      const stick = nearBottom();
      renderMarkdown(answer.body, reply);
      if (stick && visible()) scrollToBottom();
    };
    let outcome = "done";
    try {
      await streamChat(model, history, controller.signal, (piece) => {
        reply += piece;
        if (!pending) {
          pending = true;
          requestAnimationFrame(paint);
        }
      });
    } catch (err) {
      if (err.name === "AbortError") {
        outcome = "stopped";
      } else {
        outcome = "error";
        showError(`No answer from '${model}': ${err.message}`);
      }
    }
    paint();
    addCopyButtons(answer.body);
    answer.root.classList.remove("streaming");
    answer.root.removeAttribute("aria-busy");
    if (!reply) {
      answer.root.remove();
      if (visible() && !conversation.messages.length) showEmpty(true);
    } else if (outcome !== "done") {
      answer.root.classList.add(outcome);
      answer.meta.textContent = outcome === "stopped" ? "Stopped" : "Incomplete: the answer broke off";
    }

    // 3. persist the answer (a stopped one too, as far as it got)
    if (reply && outcome !== "error") {
      try {
        const saved = await api(
          "POST",
          `/api/conversations/${encodeURIComponent(conversation.id)}/messages`,
          { role: "assistant", content: reply },
        );
        conversation.messages.push(saved);
      } catch (err) {
        showError(`The answer could not be saved: ${err.message}`);
      }
    }
    state.streaming = null;
    setStreaming(false);
    await loadConversations();
    if (visible()) el.prompt.focus();
  }

  function autosize() {
    el.prompt.style.height = "auto";
    el.prompt.style.height = `${Math.min(el.prompt.scrollHeight, 240)}px`;
  }

  // -- wiring -----------------------------------------------------------------------------------------

  el.composer.addEventListener("submit", (event) => {
    event.preventDefault();
    send();
  });
  el.prompt.addEventListener("keydown", (event) => {
    // Enter sends, Shift+Enter is a new line; Enter that confirms an IME composition (CJK input) is not a send
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing && event.keyCode !== 229) {
      event.preventDefault();
      send();
    }
  });
  el.prompt.addEventListener("input", autosize);
  el.stop.addEventListener("click", stopStreaming);
  el.newChat.addEventListener("click", newChat);
  el.errorClose.addEventListener("click", clearError);
  el.toggleSidebar.addEventListener("click", () =>
    setSidebarOpen(!el.layout.classList.contains("sidebar-open")),
  );
  el.scrim.addEventListener("click", () => setSidebarOpen(false));
  el.model.addEventListener("change", async () => {
    localStorage.setItem(MODEL_KEY, el.model.value);
    const conversation = state.active;
    if (conversation && !state.streaming && conversation.model !== el.model.value) {
      try {
        await api("PATCH", `/api/conversations/${encodeURIComponent(conversation.id)}`, {
          model: el.model.value,
        });
        conversation.model = el.model.value;
      } catch (err) {
        showError(`Could not change the conversation's model: ${err.message}`);
      }
    }
  });

  el.apiKey.addEventListener("click", async () => {
    const current = localStorage.getItem(KEY_STORAGE) || "";
    const entered = window.prompt("API key for this server (kept in this browser only):", current);
    if (entered === null) return;
    if (entered.trim()) localStorage.setItem(KEY_STORAGE, entered.trim());
    else localStorage.removeItem(KEY_STORAGE);
    clearError();
    await Promise.all([loadModels(), loadConversations()]);
  });

  async function start() {
    renderTitle();
    await Promise.all([loadModels(), loadConversations()]);
    const id = decodeURIComponent(location.hash.slice(1));
    if (id && state.conversations.some((c) => c.id === id)) await openConversation(id);
    else if (id) setLocation(null);
    el.prompt.focus();
    document.body.dataset.ready = "true";
  }

  start();
})();
