/*
 * LLMForge chat page. Talks to the gateway like any client: models from GET /v1/models, answers streamed
 * from POST /v1/chat/completions (SSE), history kept through /api/conversations. Knowledge-base models
 * (provider `rag`) answer with `sources`; their `[n]` markers become links to the numbered sources shown
 * under the answer, each of which opens its chunk on the knowledge-base page. An answer can be stopped,
 * copied and (the last one) regenerated. No framework, no build step; Markdown is rendered with the
 * vendored marked and sanitized with DOMPurify before it touches the DOM. Shared parts: shell.js.
 */
(function () {
  "use strict";

  const F = window.Forge;
  const t = F.t;
  const MODEL_KEY = "llmforge.chat.model";
  const $ = (id) => document.getElementById(id);
  const el = {
    layout: $("layout"),
    scrim: $("scrim"),
    toggleSidebar: $("toggle-sidebar"),
    newChat: $("new-chat"),
    conversations: $("conversations"),
    conversationsEmpty: $("conversations-empty"),
    title: $("chat-title"),
    model: $("model-select"),
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
    models: [], // chat models from /v1/models
  };
  let answerCounter = 0;

  const api = F.api;
  const showError = F.showError;
  const clearError = F.clearError;

  /*
   * POST a streaming chat completion and call onText for every piece of text. Resolves with
   * {finishReason, usage, sources} when the server sends [DONE]; rejects with the server's message on
   * an HTTP error, an error event or a broken stream, and with an AbortError when `signal` is aborted.
   */
  async function streamChat(model, messages, signal, onText) {
    let resp;
    try {
      resp = await fetch("/v1/chat/completions", {
        method: "POST",
        headers: F.authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
        body: JSON.stringify({ model, messages, stream: true, stream_options: { include_usage: true } }),
        signal,
      });
    } catch (err) {
      if (err.name === "AbortError") throw err;
      throw F.networkError(err);
    }
    if (!resp.ok) throw await F.errorFrom(resp);
    if (!resp.body) throw new Error("This browser cannot read streamed answers.");

    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    const result = { done: false, finishReason: null, usage: null, sources: [] };
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
      if (event.error) throw new Error(event.error.message || "The model failed while answering.");
      const choice = event.choices && event.choices[0];
      if (choice && choice.delta && typeof choice.delta.content === "string" && choice.delta.content) {
        onText(choice.delta.content);
      }
      if (choice && choice.finish_reason) result.finishReason = choice.finish_reason;
      if (event.usage) result.usage = event.usage;
      if (Array.isArray(event.sources)) result.sources = event.sources;
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
      button.textContent = t("common.copy");
      button.addEventListener("click", async () => {
        const code = pre.querySelector("code") || pre;
        try {
          await navigator.clipboard.writeText(code.innerText);
          button.textContent = t("common.copied");
        } catch (_) {
          button.textContent = t("common.copyFailed");
        }
        setTimeout(() => (button.textContent = t("common.copy")), 1500);
      });
      pre.appendChild(button);
    }
  }

  /* Turn each `[n]` naming one of `numbers` into a link to that source (text outside code and links). */
  function linkCitations(body, numbers, anchor) {
    const walker = document.createTreeWalker(body, NodeFilter.SHOW_TEXT, {
      acceptNode: (node) =>
        node.parentElement.closest("code, pre, a") || !/\[\d{1,3}\]/.test(node.nodeValue)
          ? NodeFilter.FILTER_REJECT
          : NodeFilter.FILTER_ACCEPT,
    });
    const nodes = [];
    while (walker.nextNode()) nodes.push(walker.currentNode);
    for (const node of nodes) {
      const parts = node.nodeValue.split(/(\[\d{1,3}\])/);
      const fragment = document.createDocumentFragment();
      for (const part of parts) {
        const m = /^\[(\d{1,3})\]$/.exec(part);
        if (m && numbers.has(Number(m[1]))) {
          const n = Number(m[1]);
          const link = F.el("a", { class: "cite", href: `#${anchor}-${n}`, "data-source": n, text: `[${n}]` });
          link.addEventListener("click", (event) => {
            event.preventDefault();
            const target = document.getElementById(`${anchor}-${n}`);
            if (!target) return;
            target.scrollIntoView({ block: "nearest", behavior: "smooth" });
            target.classList.remove("flash");
            void target.offsetWidth; // restart the highlight animation
            target.classList.add("flash");
          });
          fragment.append(link);
        } else if (part) {
          fragment.append(document.createTextNode(part));
        }
      }
      node.replaceWith(fragment);
    }
  }

  function sourceLink(source) {
    const hash = `kb=${encodeURIComponent(source.kb)}&chunk=${encodeURIComponent(source.id)}`;
    return `/kb#${hash}`;
  }

  /* The numbered sources under an answer, and its markers linked to them. */
  function renderSources(m, sources) {
    m.sources.replaceChildren();
    if (!sources || !sources.length) {
      m.sources.hidden = true;
      return;
    }
    const anchor = m.root.dataset.anchor;
    const list = F.el("ol", { class: "source-list" });
    for (const s of sources) {
      const title = s.title || F.fmt.fileName(s.source);
      const headings = (s.heading || "").split(" > ").filter((h) => h && h !== title);
      const where = [title, ...headings].join(" › ");
      const page = s.page ? ` · ${t("chat.page", { page: s.page })}` : "";
      list.append(
        F.el(
          "li",
          { id: `${anchor}-${s.number}`, class: "source" + (s.cited ? " cited" : ""), "data-testid": "source" },
          F.el("span", { class: "source-number", text: `[${s.number}]` }),
          F.el(
            "div",
            { class: "source-body" },
            F.el("div", { class: "source-where", text: where + page }),
            F.el("div", { class: "source-text", text: s.text.length > 240 ? s.text.slice(0, 239) + "…" : s.text }),
            F.el(
              "a",
              { class: "source-open", href: sourceLink(s), title: t("chat.openSource") },
              F.icon("external"),
              F.el("span", { text: `${s.kb} · ${F.fmt.fileName(s.source)}` }),
            ),
          ),
        ),
      );
    }
    m.sources.append(F.el("div", { class: "sources-title", text: t("chat.sources") }), list);
    m.sources.hidden = false;
    linkCitations(m.body, new Set(sources.map((s) => s.number)), anchor);
  }

  function nearBottom() {
    const m = el.messages;
    return m.scrollHeight - m.scrollTop - m.clientHeight < 120;
  }

  function scrollToBottom() {
    el.messages.scrollTop = el.messages.scrollHeight;
  }

  const ROLE_LABELS = { user: "chat.you", assistant: "chat.assistant", system: "chat.system" };

  function actionButton(iconName, label, testid, onClick) {
    return F.el(
      "button",
      { type: "button", class: "button small ghost", "data-testid": testid, title: label, onclick: onClick },
      F.icon(iconName),
      F.el("span", { class: "label", text: label }),
    );
  }

  /* A message element; returns {root, body, meta, sources, actions, text}. Assistant text is Markdown. */
  function messageElement(role, content, sources) {
    const root = document.createElement("article");
    root.className = `message ${role}`;
    root.dataset.role = role;
    root.dataset.testid = "message";
    root.dataset.anchor = `answer-${++answerCounter}`;
    const label = F.el("div", { class: "role", text: t(ROLE_LABELS[role] || role) });
    const body = F.el("div", { class: role === "assistant" ? "content markdown" : "content plain" });
    const sourcesBox = F.el("div", { class: "sources", hidden: true });
    const meta = F.el("div", { class: "meta" });
    const actions = F.el("div", { class: "message-actions" });
    root.append(label, body, sourcesBox, meta, actions);
    const m = { root, body, meta, sources: sourcesBox, actions, text: content };
    if (role === "assistant") {
      renderMarkdown(body, content);
      addCopyButtons(body);
      renderSources(m, sources);
    } else {
      body.textContent = content;
    }
    return m;
  }

  /* Copy on every finished answer; Regenerate on the conversation's last one. */
  function addAnswerActions(m, isLast) {
    m.actions.replaceChildren(
      actionButton("copy", t("common.copy"), "copy-answer", () => F.copyText(m.text, m.actions.firstChild)),
    );
    if (isLast) m.actions.append(actionButton("refresh", t("chat.regenerate"), "regenerate", regenerate));
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
    messages.forEach((msg, i) => {
      const m = messageElement(msg.role, msg.content, msg.sources);
      if (msg.role === "assistant") addAnswerActions(m, i === messages.length - 1);
      el.messages.appendChild(m.root);
    });
    scrollToBottom();
    renderTitle();
  }

  function renderTitle() {
    const title = (state.active && state.active.title) || t("chat.newChat");
    el.title.textContent = title;
    document.title = `${title} · LLMForge`;
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
      const count = c.message_count === 1 ? t("chat.message1") : t("chat.messages", { n: c.message_count });
      open.append(
        F.el("span", { class: "conversation-title", text: title }),
        F.el("span", { class: "conversation-meta", text: `${count} · ${F.fmt.ago(c.updated_at)}` }),
      );
      open.addEventListener("click", () => openConversation(c.id));

      const del = document.createElement("button");
      del.type = "button";
      del.className = "conversation-delete";
      del.title = t("chat.deleteConversation");
      del.setAttribute("aria-label", `${t("common.delete")}: ${title}`);
      del.textContent = "×";
      del.addEventListener("click", (event) => {
        event.stopPropagation();
        if (del.dataset.confirm === "1") {
          deleteConversation(c.id);
          return;
        }
        del.dataset.confirm = "1";
        del.textContent = t("chat.deleteAsk");
        setTimeout(() => {
          del.dataset.confirm = "";
          del.textContent = "×";
        }, 4000);
      });

      item.append(open, del);
      el.conversations.appendChild(item);
    }
  }

  function setStreaming(on) {
    el.send.hidden = on;
    el.stop.hidden = !on;
    el.layout.classList.toggle("busy", on);
    for (const b of el.messages.querySelectorAll("[data-testid=regenerate]")) b.disabled = on;
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
      showError(t("chat.loadModelsFailed", { error: err.message }));
      return;
    }
    const chat = (body.data || []).filter((m) => !m.llmforge || m.llmforge.kind === "chat");
    state.models = chat;
    const previous = el.model.value;
    el.model.replaceChildren();
    if (!chat.length) {
      const option = new Option(t("chat.noModels"), "");
      option.disabled = true;
      el.model.appendChild(option);
      el.model.disabled = true;
      showError(t("chat.noModelsHelp"));
      return;
    }
    const grounded = (m) => m.llmforge && m.llmforge.provider === "rag";
    const groups = [
      [t("chat.models"), chat.filter((m) => !grounded(m))],
      [t("chat.kbModels"), chat.filter(grounded)],
    ].filter(([, models]) => models.length);
    for (const [label, models] of groups) {
      const parent = groups.length > 1 ? F.el("optgroup", { label }) : el.model;
      for (const m of models) {
        const provider = m.llmforge && m.llmforge.provider;
        const option = new Option(m.id, m.id);
        if (provider) option.title = `${m.id} (${provider})`;
        parent.appendChild(option);
      }
      if (parent !== el.model) el.model.appendChild(parent);
    }
    el.model.disabled = false;
    const saved = previous || localStorage.getItem(MODEL_KEY);
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
      showError(t("chat.loadConversationsFailed", { error: err.message }));
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
      showError(t("chat.openFailed", { error: err.message }));
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
      showError(t("chat.deleteFailed", { error: err.message }));
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
      showError(t("chat.pickModel"));
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
      const saved = await api("POST", `/api/conversations/${encodeURIComponent(conversation.id)}/messages`, {
        role: "user",
        content: text,
      });
      conversation.messages.push(saved);
      if (!conversation.title) conversation.title = text.trim().split(/\s+/).join(" ").slice(0, 60);
    } catch (err) {
      showError(t("chat.saveFailed", { error: err.message }));
      if (!el.prompt.value) el.prompt.value = text;
      autosize();
      state.streaming = null;
      setStreaming(false);
      return;
    }
    if (state.active === conversation) {
      for (const b of el.messages.querySelectorAll("[data-testid=regenerate]")) b.remove();
      appendMessage("user", text);
      renderTitle();
    }
    loadConversations();
    await answer(conversation, model, controller);
  }

  /* Stream the answer to the conversation's history into a new assistant message and save it. */
  async function answer(conversation, model, controller) {
    const visible = () => state.active === conversation;
    const history = conversation.messages.map((m) => ({ role: m.role, content: m.content }));
    const m = visible() ? appendMessage("assistant", "") : messageElement("assistant", "");
    m.root.classList.add("streaming");
    m.root.setAttribute("aria-busy", "true"); // screen readers wait for the finished answer
    let reply = "";
    let pending = 0;
    const paint = () => {
      pending = 0;
      const stick = nearBottom();
      renderMarkdown(m.body, reply);
      if (stick && visible()) scrollToBottom();
    };
    let outcome = "done";
    let result = null;
    try {
      result = await streamChat(model, history, controller.signal, (piece) => {
        reply += piece;
        if (!pending) pending = requestAnimationFrame(paint);
      });
    } catch (err) {
      if (err.name === "AbortError") {
        outcome = "stopped";
      } else {
        outcome = "error";
        showError(t("chat.noAnswer", { model, error: err.message }));
      }
    }
    if (pending) cancelAnimationFrame(pending); // a late frame would repaint over the links below
    paint();
    m.text = reply;
    const sources = (result && result.sources) || [];
    addCopyButtons(m.body);
    renderSources(m, sources);
    m.root.classList.remove("streaming");
    m.root.removeAttribute("aria-busy");
    if (!reply) {
      m.root.remove();
      if (visible() && !conversation.messages.length) showEmpty(true);
    } else if (outcome !== "done") {
      m.root.classList.add(outcome);
      m.meta.textContent = outcome === "stopped" ? t("chat.stopped") : t("chat.incomplete");
    }

    // persist the answer (a stopped one too, as far as it got)
    if (reply && outcome !== "error") {
      try {
        const saved = await api("POST", `/api/conversations/${encodeURIComponent(conversation.id)}/messages`, {
          role: "assistant",
          content: reply,
          sources: sources.length ? sources : null,
        });
        conversation.messages.push(saved);
        addAnswerActions(m, true);
      } catch (err) {
        showError(t("chat.answerSaveFailed", { error: err.message }));
      }
    }
    state.streaming = null;
    setStreaming(false);
    await loadConversations();
    if (visible()) el.prompt.focus();
  }

  /* Replace the last answer with a new one from the model picked now. */
  async function regenerate() {
    const conversation = state.active;
    if (!conversation || state.streaming) return;
    const last = conversation.messages[conversation.messages.length - 1];
    if (!last || last.role !== "assistant") return;
    const model = el.model.value;
    clearError();
    const controller = new AbortController();
    state.streaming = { controller, conversationId: conversation.id };
    setStreaming(true);
    try {
      await api("DELETE", `/api/conversations/${encodeURIComponent(conversation.id)}/messages/${last.id}`);
    } catch (err) {
      showError(t("chat.regenerateFailed", { error: err.message }));
      state.streaming = null;
      setStreaming(false);
      return;
    }
    conversation.messages.pop();
    const nodes = el.messages.querySelectorAll(".message");
    if (nodes.length) nodes[nodes.length - 1].remove();
    await answer(conversation, model, controller);
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
  el.toggleSidebar.addEventListener("click", () => setSidebarOpen(!el.layout.classList.contains("sidebar-open")));
  el.scrim.addEventListener("click", () => setSidebarOpen(false));
  el.model.addEventListener("change", async () => {
    localStorage.setItem(MODEL_KEY, el.model.value);
    const conversation = state.active;
    if (conversation && !state.streaming && conversation.model !== el.model.value) {
      try {
        await api("PATCH", `/api/conversations/${encodeURIComponent(conversation.id)}`, { model: el.model.value });
        conversation.model = el.model.value;
      } catch (err) {
        showError(t("chat.modelChangeFailed", { error: err.message }));
      }
    }
  });

  F.onKey(() => Promise.all([loadModels(), loadConversations()]));
  F.onLanguage(() => {
    if (!state.streaming) renderConversation();
    renderSidebar();
    loadModels();
  });

  async function start() {
    renderTitle();
    await Promise.all([loadModels(), loadConversations()]);
    const id = decodeURIComponent(location.hash.slice(1));
    if (id && state.conversations.some((c) => c.id === id)) await openConversation(id);
    else if (id) setLocation(null);
    el.prompt.focus();
    F.ready();
  }

  start();
})();
