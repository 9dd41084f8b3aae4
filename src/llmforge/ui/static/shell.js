/*
 * The workbench shell, shared by every page: the navigation rail, the language switch (English or
 * Simplified Chinese, from the browser or the switch, kept in localStorage), the API key dialog (the
 * key kept in this browser only), the HTTP helper that sends the key and turns error bodies into
 * messages, the error banner, a confirm dialog, number and time formats, and icons drawn as inline SVG
 * (so they render without emoji or icon fonts). Pages use it as `window.Forge`.
 *
 * A page slots into the navigation by adding an entry to PAGES (and its route in ui/app.py): distill,
 * agents, review and audit pages are expected to do exactly that.
 */
(function () {
  "use strict";

  const LANG_KEY = "llmforge.lang";
  const KEY_STORAGE = "llmforge.apiKey";
  const LANGS = [
    { id: "en", label: "EN", name: "English" },
    { id: "zh-CN", label: "中文", name: "简体中文" },
  ];
  // id, link, icon, label key; `master`: shown greyed unless the key is the master key
  const PAGES = [
    { id: "chat", href: "/", icon: "chat", label: "nav.chat" },
    { id: "kb", href: "/kb", icon: "book", label: "nav.kb" },
    { id: "traces", href: "/traces", icon: "activity", label: "nav.traces" },
    { id: "evals", href: "/evals", icon: "gauge", label: "nav.evals" },
    { id: "keys", href: "/keys", icon: "key", label: "nav.keys" },
    { id: "distill", href: "/distill", icon: "layers", label: "nav.distill" },
    { id: "agents", href: "/agents", icon: "cpu", label: "nav.agents" },
    { id: "review", href: "/review", icon: "inbox", label: "nav.review" },
    { id: "audit", href: "/audit", icon: "shield", label: "nav.audit" },
  ];

  // 24x24 stroke icons (paths in the style of Feather, MIT)
  const ICONS = {
    chat: ["M21 15a2 2 0 0 1-2 2H7l-4 4V5a2 2 0 0 1 2-2h14a2 2 0 0 1 2 2z"],
    book: [
      "M4 19.5A2.5 2.5 0 0 1 6.5 17H20",
      "M6.5 2H20v20H6.5A2.5 2.5 0 0 1 4 19.5v-15A2.5 2.5 0 0 1 6.5 2z",
    ],
    activity: ["M22 12h-4l-3 9L9 3l-3 9H2"],
    gauge: ["M12 20V10", "M18 20V4", "M6 20v-4"],
    key: [
      "M21 2l-2 2m-7.61 7.61a5.5 5.5 0 1 1-7.778 7.778 5.5 5.5 0 0 1 7.777-7.777zm0 0L15.5 7.5m0 0l3 3L22 7l-3-3m-3.5 3.5L19 4",
    ],
    copy: ["M9 9h11v11H9z", "M5 15H4a1 1 0 0 1-1-1V4a1 1 0 0 1 1-1h10a1 1 0 0 1 1 1v1"],
    refresh: ["M23 4v6h-6", "M1 20v-6h6", "M3.51 9a9 9 0 0 1 14.85-3.36L23 10M1 14l4.64 4.36A9 9 0 0 0 20.49 15"],
    stop: ["M6 6h12v12H6z"],
    trash: ["M3 6h18", "M8 6V4h8v2", "M19 6l-1 14H6L5 6"],
    upload: ["M21 15v4a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2v-4", "M17 8l-5-5-5 5", "M12 3v12"],
    folder: ["M22 19a2 2 0 0 1-2 2H4a2 2 0 0 1-2-2V5a2 2 0 0 1 2-2h5l2 3h9a2 2 0 0 1 2 2z"],
    search: ["M11 19a8 8 0 1 0 0-16 8 8 0 0 0 0 16z", "M21 21l-4.35-4.35"],
    external: ["M18 13v6a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2V8a2 2 0 0 1 2-2h6", "M15 3h6v6", "M10 14L21 3"],
    close: ["M18 6L6 18", "M6 6l12 12"],
    menu: ["M3 12h18", "M3 6h18", "M3 18h18"],
    globe: [
      "M12 22a10 10 0 1 0 0-20 10 10 0 0 0 0 20z",
      "M2 12h20",
      "M12 2a15.3 15.3 0 0 1 4 10 15.3 15.3 0 0 1-4 10 15.3 15.3 0 0 1-4-10 15.3 15.3 0 0 1 4-10z",
    ],
    layers: ["M12 2L2 7l10 5 10-5-10-5z", "M2 17l10 5 10-5", "M2 12l10 5 10-5"],
    cpu: [
      "M4 4h16v16H4z",
      "M9 9h6v6H9z",
      "M9 1v3M15 1v3M9 20v3M15 20v3M20 9h3M20 14h3M1 9h3M1 14h3",
    ],
    inbox: [
      "M22 12h-6l-2 3h-4l-2-3H2",
      "M5.45 5.11L2 12v6a2 2 0 0 0 2 2h16a2 2 0 0 0 2-2v-6l-3.45-6.89A2 2 0 0 0 16.76 4H7.24a2 2 0 0 0-1.79 1.11z",
    ],
    shield: ["M12 22s8-4 8-10V5l-8-3-8 3v7c0 6 8 10 8 10z"],
    download: ["M21 15v4a2 2 0 0 1-2 2H5a2 2 0 0 1-2-2v-4", "M7 10l5 5 5-5", "M12 15V3"],
    check: ["M20 6L9 17l-5-5"],
    play: ["M5 3l14 9-14 9V3z"],
    sync: ["M21 12a9 9 0 0 1-15.36 6.36L3 16", "M3 12a9 9 0 0 1 15.36-6.36L21 8", "M21 3v5h-5", "M3 21v-5h5"],
  };

  const SVG_NS = "http://www.w3.org/2000/svg";

  function icon(name, extraClass) {
    const svg = document.createElementNS(SVG_NS, "svg");
    svg.setAttribute("viewBox", "0 0 24 24");
    svg.setAttribute("width", "18");
    svg.setAttribute("height", "18");
    svg.setAttribute("fill", "none");
    svg.setAttribute("stroke", "currentColor");
    svg.setAttribute("stroke-width", "2");
    svg.setAttribute("stroke-linecap", "round");
    svg.setAttribute("stroke-linejoin", "round");
    svg.setAttribute("aria-hidden", "true");
    svg.setAttribute("focusable", "false");
    svg.setAttribute("class", "icon" + (extraClass ? " " + extraClass : ""));
    svg.dataset.icon = name;
    for (const d of ICONS[name] || []) {
      const path = document.createElementNS(SVG_NS, "path");
      path.setAttribute("d", d);
      svg.appendChild(path);
    }
    return svg;
  }

  // -- language ---------------------------------------------------------------------------------------

  const MESSAGES = window.ForgeMessages || { en: {} };

  function pickLanguage() {
    const saved = localStorage.getItem(LANG_KEY);
    if (saved && MESSAGES[saved]) return saved;
    const wanted = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language];
    for (const lang of wanted) {
      if (lang && lang.toLowerCase().startsWith("zh")) return "zh-CN";
      if (lang && lang.toLowerCase().startsWith("en")) return "en";
    }
    return "en";
  }

  let lang = pickLanguage();
  const languageListeners = [];

  function t(key, vars) {
    const table = MESSAGES[lang] || {};
    let text = key in table ? table[key] : key in MESSAGES.en ? MESSAGES.en[key] : key;
    if (vars) text = text.replace(/\{(\w+)\}/g, (m, name) => (name in vars ? String(vars[name]) : m));
    return text;
  }

  function translate(root) {
    const scope = root || document;
    for (const node of scope.querySelectorAll("[data-i18n]")) node.textContent = t(node.dataset.i18n);
    for (const [attr, data] of [
      ["placeholder", "i18nPlaceholder"],
      ["title", "i18nTitle"],
      ["aria-label", "i18nAriaLabel"],
    ]) {
      const selector = `[data-i18n-${attr === "aria-label" ? "aria-label" : attr}]`;
      for (const node of scope.querySelectorAll(selector)) node.setAttribute(attr, t(node.dataset[data]));
    }
  }

  function setLanguage(next) {
    if (!MESSAGES[next]) return;
    lang = next;
    localStorage.setItem(LANG_KEY, next);
    document.documentElement.lang = next;
    const keyDialog = document.getElementById("key-dialog");
    if (keyDialog && !keyDialog.open) keyDialog.remove(); // rebuilt in the new language
    translate();
    renderRail();
    for (const fn of languageListeners) fn(next);
  }

  // -- DOM helpers ------------------------------------------------------------------------------------

  /* el("div", {class: "x", text: "..."}, child, ...): attributes are set as attributes, never as HTML. */
  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = value;
      else if (name === "class") node.className = value;
      else if (name === "dataset") Object.assign(node.dataset, value);
      else if (name.startsWith("on") && typeof value === "function") node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // -- HTTP -------------------------------------------------------------------------------------------

  function apiKey() {
    return localStorage.getItem(KEY_STORAGE) || "";
  }

  function authHeaders(headers) {
    const key = apiKey();
    if (key) headers.Authorization = `Bearer ${key}`;
    return headers;
  }

  class ApiError extends Error {
    constructor(message, status, body) {
      super(message);
      this.status = status;
      this.body = body;
    }
  }

  async function errorFrom(resp) {
    let text = "";
    try {
      text = await resp.text();
    } catch (_) {
      /* unreadable: the status line says enough */
    }
    let body = null;
    try {
      body = JSON.parse(text);
    } catch (_) {
      /* not JSON */
    }
    if (body && body.error && body.error.message) {
      const hint = resp.status === 401 ? t("error.setKey") : "";
      return new ApiError(body.error.message + hint, resp.status, body);
    }
    const status = t("error.status", { status: `${resp.status}${resp.statusText ? " " + resp.statusText : ""}` });
    return new ApiError(text ? `${status}: ${text.slice(0, 300)}` : status, resp.status, body);
  }

  /* The note for a page that needs the master key, when `err` is the API's refusal (else null). */
  function masterNote(err) {
    if (!err || err.status !== 403) return null;
    return /authentication is off/i.test(err.message) ? t("error.masterOff") : t("error.masterOnly");
  }

  /* Fetch `path` with the key and save it as `filename` (a plain link cannot send the key). */
  async function download(path, filename) {
    let resp;
    try {
      resp = await fetch(path, { headers: authHeaders({}) });
    } catch (err) {
      throw networkError(err);
    }
    if (!resp.ok) throw await errorFrom(resp);
    const url = URL.createObjectURL(await resp.blob());
    const link = el("a", { href: url, download: filename, hidden: true });
    document.body.appendChild(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  }

  function networkError(err) {
    return new ApiError(t("error.network", { detail: err.message || err }), 0, null);
  }

  /* JSON request; resolves with the parsed body, rejects with an ApiError carrying status and body. */
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
    if (!resp.ok) throw await errorFrom(resp);
    return resp.json();
  }

  function query(params) {
    const parts = [];
    for (const [k, v] of Object.entries(params)) {
      if (v === null || v === undefined || v === "") continue;
      parts.push(`${encodeURIComponent(k)}=${encodeURIComponent(v)}`);
    }
    return parts.length ? `?${parts.join("&")}` : "";
  }

  // -- error banner -----------------------------------------------------------------------------------

  function showError(message) {
    const box = document.getElementById("error");
    const text = document.getElementById("error-text");
    if (!box || !text) return;
    text.textContent = message;
    box.hidden = false;
  }

  function clearError() {
    const box = document.getElementById("error");
    const text = document.getElementById("error-text");
    if (box) box.hidden = true;
    if (text) text.textContent = "";
  }

  // -- dialogs ----------------------------------------------------------------------------------------

  function dialog(id, title) {
    const box = el("dialog", { class: "dialog", id, "aria-labelledby": `${id}-title` });
    const head = el(
      "div",
      { class: "dialog-head" },
      el("h2", { id: `${id}-title`, text: title }),
      el(
        "button",
        { type: "button", class: "button icon", "aria-label": t("common.close"), onclick: () => box.close() },
        icon("close"),
      ),
    );
    box.append(head);
    document.body.appendChild(box);
    return box;
  }

  /* Ask before something that cannot be undone; resolves true when confirmed. */
  function confirmAction(message, confirmLabel) {
    return new Promise((resolve) => {
      const box = el("dialog", { class: "dialog confirm", id: "confirm-dialog", role: "alertdialog" });
      const ok = el("button", { type: "button", class: "button danger", id: "confirm-ok", text: confirmLabel || t("common.confirm") });
      const cancel = el("button", { type: "button", class: "button", id: "confirm-cancel", text: t("common.cancel") });
      box.append(el("p", { class: "confirm-text", text: message }), el("div", { class: "dialog-actions" }, cancel, ok));
      document.body.appendChild(box);
      let answer = false;
      ok.addEventListener("click", () => {
        answer = true;
        box.close();
      });
      cancel.addEventListener("click", () => box.close());
      box.addEventListener("close", () => {
        box.remove();
        resolve(answer);
      });
      box.showModal();
      cancel.focus();
    });
  }

  const keyListeners = [];

  function openKeyDialog() {
    const box = document.getElementById("key-dialog") || buildKeyDialog();
    const input = box.querySelector("#key-input");
    input.value = apiKey();
    box.showModal();
    input.focus();
  }

  function buildKeyDialog() {
    const box = dialog("key-dialog", t("key.title"));
    const input = el("input", {
      type: "password",
      id: "key-input",
      class: "input",
      autocomplete: "off",
      spellcheck: "false",
      placeholder: t("key.placeholder"),
      "aria-label": t("key.title"),
    });
    const save = el("button", { type: "submit", class: "button primary", id: "key-save", text: t("key.save") });
    const clear = el("button", { type: "button", class: "button", id: "key-clear", text: t("key.clear") });
    const form = el(
      "form",
      { class: "dialog-body", method: "dialog" },
      el("p", { class: "muted", text: t("key.help") }),
      input,
      el("div", { class: "dialog-actions" }, clear, save),
    );
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      setKey(input.value.trim());
      box.close();
    });
    clear.addEventListener("click", () => {
      setKey("");
      box.close();
    });
    box.append(form);
    return box;
  }

  function setKey(value) {
    if (value) localStorage.setItem(KEY_STORAGE, value);
    else localStorage.removeItem(KEY_STORAGE);
    clearError();
    renderRail();
    for (const fn of keyListeners) fn(value);
  }

  // -- the rail ---------------------------------------------------------------------------------------

  function currentPage() {
    return document.body.dataset.page || "chat";
  }

  function renderRail() {
    const rail = document.getElementById("rail");
    if (!rail) return;
    rail.replaceChildren();
    rail.setAttribute("aria-label", t("nav.pages"));
    const brand = el(
      "a",
      { class: "rail-brand", href: "/", title: t("app.name") },
      el("img", { src: "/static/favicon.svg", alt: "", width: "26", height: "26" }),
      el("span", { class: "rail-brand-name", text: t("app.name") }),
    );
    const list = el("ul", { class: "rail-pages" });
    for (const p of PAGES) {
      const active = p.id === currentPage();
      list.append(
        el(
          "li",
          {},
          el(
            "a",
            {
              class: "rail-link" + (active ? " active" : ""),
              href: p.href,
              "aria-current": active ? "page" : null,
              dataset: { page: p.id },
              title: t(p.label),
            },
            icon(p.icon),
            el("span", { class: "rail-label", text: t(p.label) }),
          ),
        ),
      );
    }
    const select = el("select", { id: "lang-select", class: "rail-lang", "aria-label": t("nav.language") });
    for (const l of LANGS) {
      const option = new Option(l.label, l.id);
      option.title = l.name;
      option.selected = l.id === lang;
      select.append(option);
    }
    select.addEventListener("change", () => setLanguage(select.value));
    const hasKey = Boolean(apiKey());
    const keyButton = el(
      "button",
      {
        type: "button",
        class: "button icon rail-key" + (hasKey ? " set" : ""),
        id: "api-key",
        "data-testid": "api-key",
        title: hasKey ? t("key.set") : t("key.unset"),
        "aria-label": t("key.button"),
        onclick: openKeyDialog,
      },
      icon("key"),
    );
    rail.append(
      brand,
      list,
      el("div", { class: "rail-tools" }, el("span", { class: "rail-globe" }, icon("globe")), select, keyButton),
    );
    // a phone's top bar scrolls sideways when the pages do not fit: keep this page's link in view
    const active = list.querySelector(".rail-link.active");
    if (active && list.scrollWidth > list.clientWidth) {
      const a = active.getBoundingClientRect();
      const l = list.getBoundingClientRect();
      list.scrollLeft += a.left - l.left - (l.width - a.width) / 2;
    }
  }

  // -- formats ----------------------------------------------------------------------------------------

  const fmt = {
    time(seconds) {
      return new Date(seconds * 1000).toLocaleString(lang);
    },
    shortTime(seconds, spanSeconds) {
      const d = new Date(seconds * 1000);
      if (spanSeconds && spanSeconds > 2 * 86400) {
        return d.toLocaleDateString(lang, { month: "short", day: "numeric" });
      }
      return d.toLocaleTimeString(lang, { hour: "2-digit", minute: "2-digit" });
    },
    ms(value) {
      if (value === null || value === undefined) return "–";
      if (value >= 10000) return `${(value / 1000).toFixed(1)} s`;
      if (value >= 100) return `${Math.round(value)} ms`;
      return `${value.toFixed(1)} ms`;
    },
    usd(value) {
      if (value === null || value === undefined) return "–";
      if (value === 0) return "$0";
      if (value < 0.01) return `$${value.toPrecision(2)}`;
      return `$${value.toFixed(2)}`;
    },
    num(value) {
      if (value === null || value === undefined) return "–";
      return Number(value).toLocaleString(lang);
    },
    pct(value) {
      if (value === null || value === undefined || Number.isNaN(value)) return "–";
      return `${(value * 100).toFixed(1)}%`;
    },
    score(value) {
      if (value === null || value === undefined) return "–";
      return Number(value).toFixed(3);
    },
    ago(seconds) {
      const diff = Date.now() / 1000 - seconds;
      if (diff < 60) return t("chat.justNow");
      if (diff < 3600) return t("chat.minAgo", { n: Math.floor(diff / 60) });
      if (diff < 86400) return t("chat.hAgo", { n: Math.floor(diff / 3600) });
      return new Date(seconds * 1000).toLocaleDateString(lang);
    },
    fileName(path) {
      return String(path || "").replace(/\\/g, "/").split("/").pop();
    },
  };

  async function copyText(text, button) {
    const label = button ? button.querySelector(".label") : null;
    const before = label ? label.textContent : "";
    let ok = true;
    try {
      await navigator.clipboard.writeText(text);
    } catch (_) {
      ok = false;
    }
    if (label) {
      label.textContent = ok ? t("common.copied") : t("common.copyFailed");
      setTimeout(() => (label.textContent = before), 1500);
    }
    return ok;
  }

  // -- start ------------------------------------------------------------------------------------------

  document.documentElement.lang = lang;
  translate();
  renderRail();
  const close = document.getElementById("error-close");
  if (close) close.addEventListener("click", clearError);

  window.Forge = {
    PAGES,
    t,
    translate,
    get lang() {
      return lang;
    },
    setLanguage,
    onLanguage: (fn) => languageListeners.push(fn),
    onKey: (fn) => keyListeners.push(fn),
    apiKey,
    authHeaders,
    api,
    query,
    errorFrom,
    networkError,
    masterNote,
    download,
    ApiError,
    showError,
    clearError,
    confirm: confirmAction,
    dialog,
    el,
    icon,
    fmt,
    copyText,
    ready() {
      document.body.dataset.ready = "true";
    },
  };
})();
