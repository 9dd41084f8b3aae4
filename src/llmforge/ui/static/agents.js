/*
 * Agents page: the configured agents, the runs of one, one run's events as they happen (the SSE
 * stream of /v1/agents/{name}/runs/{id}/events, read with fetch so the API key goes along), starting
 * a run, and the runs waiting for a person's approval (master key): approve the tool calls as
 * proposed, edit their arguments first, or reject with a reason. A run's stream ends when it stops or
 * pauses for approval; approving streams the rest of it here.
 */
(function () {
  "use strict";

  const F = window.Forge;
  const t = F.t;
  const $ = (id) => document.getElementById(id);
  let agents = [];
  let agent = null; // the agent whose runs are listed
  let shown = null; // {agent, id, lastSeq, controller}

  function setMain(visible, note) {
    $("page-main").hidden = !visible;
    $("page-off").hidden = visible;
    $("page-off").textContent = note || "";
  }

  const STATUS_CLASS = {
    running: "running",
    waiting_approval: "warn",
    done: "ok",
    rejected: "failed",
    failed: "failed",
    budget_exceeded: "failed",
    cancelled: "cancelled",
  };

  function statusBadge(status, testid) {
    return F.el("span", { class: `badge ${STATUS_CLASS[status] || ""}`, "data-testid": testid || null, "data-status": status, text: t(`agents.status.${status}`) });
  }

  // -- agents and their runs ----------------------------------------------------------------------

  async function loadAgents() {
    agents = (await F.api("GET", "/v1/agents")).data || [];
    const body = $("agents").tBodies[0];
    body.replaceChildren();
    for (const a of agents) {
      const tools = a.tools.map((name) => {
        const asks = a.needs_approval.includes(name);
        return F.el("span", { class: "badge" + (asks ? " warn" : ""), title: asks ? t("agents.needsApproval") : null, "data-approval": asks ? "required" : null, text: name });
      });
      const row = F.el(
        "tr",
        { class: "clickable" + (a.name === agent ? " selected" : ""), tabindex: "0", "data-testid": "agent", "data-name": a.name },
        F.el("td", {}, F.el("div", { class: "mono", text: a.name }), a.description ? F.el("div", { class: "muted small", text: a.description }) : null),
        F.el("td", { class: "mono small", text: a.model }),
        F.el("td", {}, F.el("div", { class: "chips" }, tools)),
      );
      row.addEventListener("click", () => selectAgent(a.name));
      row.addEventListener("keydown", (e) => {
        if (e.key === "Enter") selectAgent(a.name);
      });
      body.append(row);
    }
    const select = $("run-agent");
    const before = select.value;
    select.replaceChildren(...agents.map((a) => new Option(a.name, a.name)));
    if (before && agents.some((a) => a.name === before)) select.value = before;
    const wanted = new URLSearchParams(location.hash.slice(1)).get("agent");
    if (!agent && wanted && agents.some((a) => a.name === wanted)) agent = wanted;
    if (!agent && agents.length) agent = agents[0].name;
  }

  function selectAgent(name) {
    agent = name;
    history.replaceState(null, "", `#agent=${encodeURIComponent(name)}`); // kept on reload
    $("run-agent").value = name;
    for (const row of $("agents").tBodies[0].rows) row.classList.toggle("selected", row.dataset.name === name);
    loadRuns();
  }

  async function loadRuns() {
    if (!agent) return;
    $("runs-title").textContent = t("agents.runsOf", { agent });
    let runs;
    try {
      runs = (await F.api("GET", `/v1/agents/${encodeURIComponent(agent)}/runs${F.query({ status: $("runs-status").value, limit: 100 })}`)).data;
    } catch (err) {
      F.showError(err.message);
      return;
    }
    const body = $("runs").tBodies[0];
    body.replaceChildren();
    for (const run of runs) {
      const asked = run.input.filter((m) => m.role === "user").pop();
      const row = F.el(
        "tr",
        { class: "clickable" + (shown && shown.id === run.id ? " selected" : ""), tabindex: "0", "data-testid": "run", "data-id": run.id, "data-status": run.status },
        F.el("td", { class: "mono small nowrap", text: run.id }),
        F.el("td", {}, statusBadge(run.status)),
        F.el("td", {}, F.el("span", { class: "preview", title: asked ? asked.content : "", text: asked ? asked.content : "" })),
        F.el("td", { class: "num", text: F.fmt.num(run.usage.steps) }),
        F.el("td", { class: "num", text: F.fmt.usd(run.usage.cost_usd) }),
        F.el("td", { class: "nowrap small", text: F.fmt.ago(run.created_at) }),
      );
      row.addEventListener("click", () => openRun(run.agent, run.id));
      row.addEventListener("keydown", (e) => {
        if (e.key === "Enter") openRun(run.agent, run.id);
      });
      body.append(row);
    }
    $("no-runs").hidden = runs.length > 0;
  }

  // -- one run's events ---------------------------------------------------------------------------

  /* Read an SSE response, calling onEvent with each event's parsed data. */
  async function readEvents(resp, onEvent) {
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = block
          .split("\n")
          .filter((line) => line.startsWith("data:"))
          .map((line) => line.slice(5).trimStart())
          .join("\n");
        if (data) onEvent(JSON.parse(data));
      }
    }
  }

  function showRun(agentName, id) {
    if (shown && shown.controller) shown.controller.abort();
    shown = { agent: agentName, id, lastSeq: 0, controller: new AbortController() };
    $("run-title").textContent = id;
    $("events").replaceChildren();
    $("run-output").hidden = true;
    $("run-detail").hidden = false;
    $("run-detail").dataset.id = id;
    for (const row of $("runs").tBodies[0].rows) row.classList.toggle("selected", row.dataset.id === id);
    return shown;
  }

  function setStatus(status) {
    const badge = $("run-status");
    badge.className = `badge ${STATUS_CLASS[status] || ""}`;
    badge.dataset.status = status;
    badge.textContent = t(`agents.status.${status}`);
  }

  function eventText(ev) {
    switch (ev.type) {
      case "step":
        return t("agents.stepText", { node: ev.node, step: ev.step });
      case "tool_call":
        return `${ev.name}(${JSON.stringify(ev.arguments)})` + (ev.approval ? ` · ${t("agents.needsApproval")}` : "");
      case "tool_result":
        return `${ev.name} → ${ev.text}` + (ev.replayed ? ` · ${t("agents.replayed")}` : "");
      case "approval_needed":
        return ev.calls.map((c) => `${c.name}(${JSON.stringify(c.arguments)})`).join(", ");
      case "message":
        return ev.text;
      case "done":
        return [t(`agents.status.${ev.status}`), ev.stop_reason, t("agents.usage", { steps: ev.usage.steps, tokens: F.fmt.num(ev.usage.prompt_tokens + ev.usage.completion_tokens), cost: F.fmt.usd(ev.usage.cost_usd) })].filter(Boolean).join(" · ");
      default:
        return JSON.stringify(ev);
    }
  }

  function addEvent(view, ev) {
    if (view !== shown || ev.seq <= view.lastSeq) return; // another run is shown now, or seen
    view.lastSeq = ev.seq;
    const cls = ev.type === "tool_result" && ev.is_error ? "failed" : ev.type === "approval_needed" ? "warn" : ev.type === "done" ? STATUS_CLASS[ev.status] || "" : "accent";
    const item = F.el(
      "li",
      { class: "event", "data-testid": "event", "data-type": ev.type },
      F.el("span", { class: "event-seq", text: `#${ev.seq}` }),
      F.el("span", {}, F.el("span", { class: `badge ${cls}`, text: t(`agents.ev.${ev.type}`) })),
      F.el("span", { class: "event-body" + (ev.type === "tool_call" || ev.type === "tool_result" ? " mono" : ""), text: eventText(ev) }),
    );
    const list = $("events");
    list.append(item);
    list.scrollTop = list.scrollHeight; // the list scrolls, not the page
    if (ev.type === "approval_needed") setStatus("waiting_approval");
    else if (ev.type === "done") {
      setStatus(ev.status);
      if (ev.output) {
        $("run-answer").textContent = ev.output;
        $("run-output").hidden = false;
      }
    } else setStatus("running");
  }

  /* Show a run's events over a response (a start, an approval, or following it). */
  async function stream(view, respPromise) {
    $("run-live").hidden = false;
    try {
      const resp = await respPromise;
      if (!resp.ok) throw await F.errorFrom(resp);
      await readEvents(resp, (ev) => addEvent(view, ev));
    } catch (err) {
      if (err.name !== "AbortError") F.showError(err.message || String(err));
    } finally {
      if (view === shown) $("run-live").hidden = true;
    }
    await Promise.all([loadRuns(), loadPending()]);
  }

  function post(path, body, view) {
    return fetch(path, {
      method: "POST",
      headers: F.authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
      body: JSON.stringify(body),
      signal: view.controller.signal,
    });
  }

  /* A stopped or paused run's events come with the run; a running one's are then followed live. */
  async function openRun(agentName, id) {
    F.clearError();
    const view = showRun(agentName, id);
    const base = `/v1/agents/${encodeURIComponent(agentName)}/runs/${encodeURIComponent(id)}`;
    let run;
    try {
      run = await F.api("GET", `${base}?events=true`);
    } catch (err) {
      F.showError(err.message);
      return;
    }
    for (const ev of run.events) addEvent(view, ev);
    setStatus(run.status);
    if (run.status !== "running") return;
    await stream(view, fetch(`${base}/events?after=${view.lastSeq}`, { headers: F.authHeaders({ Accept: "text/event-stream" }), signal: view.controller.signal }));
  }

  async function startRun(event) {
    event.preventDefault();
    F.clearError();
    const name = $("run-agent").value;
    const input = $("run-input").value.trim();
    if (!name || !input) return;
    const body = { input, stream: true };
    const thread = $("run-thread").value.trim();
    if (thread) body.thread_id = thread;
    $("start-button").disabled = true;
    const controller = new AbortController();
    let resp;
    try {
      resp = await fetch(`/v1/agents/${encodeURIComponent(name)}/runs`, {
        method: "POST",
        headers: F.authHeaders({ "Content-Type": "application/json", Accept: "text/event-stream" }),
        body: JSON.stringify(body),
        signal: controller.signal,
      });
    } catch (err) {
      F.showError(F.networkError(err).message);
      $("start-button").disabled = false;
      return;
    } finally {
      $("start-button").disabled = false;
    }
    if (!resp.ok) {
      F.showError((await F.errorFrom(resp)).message);
      return;
    }
    const id = resp.headers.get("x-llmforge-run-id");
    $("start-status").textContent = t("agents.started", { id });
    $("run-input").value = "";
    if (agent !== name) selectAgent(name);
    const view = showRun(name, id);
    view.controller = controller;
    setStatus("running");
    loadRuns();
    await stream(view, Promise.resolve(resp));
  }

  // -- approvals ----------------------------------------------------------------------------------

  async function loadPending() {
    let runs;
    try {
      runs = (await F.api("GET", "/v1/agents/pending")).data;
    } catch (err) {
      const note = F.masterNote(err);
      if (!note) {
        F.showError(err.message);
        return;
      }
      $("pending-off").textContent = t("agents.pendingNeedsMaster");
      $("pending-off").hidden = false;
      $("pending-list").replaceChildren();
      $("no-pending").hidden = true;
      return;
    }
    $("pending-off").hidden = true;
    $("pending-list").replaceChildren(...runs.map(pendingItem));
    $("no-pending").hidden = runs.length > 0;
  }

  function pendingItem(run) {
    const asked = run.input.filter((m) => m.role === "user").pop();
    const calls = run.pending.map((c) => {
      const original = JSON.stringify(c.arguments, null, 2);
      const args = F.el("textarea", { class: "call-args", readonly: true, spellcheck: "false", "aria-label": t("agents.arguments"), "data-testid": "call-args", "data-call": c.call_id });
      args.value = original;
      args.dataset.original = original;
      return F.el(
        "div",
        { class: "pending-call", "data-testid": "pending-call", "data-name": c.name },
        F.el("div", { class: "small" }, F.el("span", { class: "badge warn", text: c.name }), " ", F.el("span", { class: "muted mono", text: c.call_id })),
        args,
      );
    });
    const approve = F.el("button", { type: "button", class: "button small primary", "data-testid": "approve" }, F.icon("check"), F.el("span", { class: "label", text: t("agents.approve") }));
    const edit = F.el("button", { type: "button", class: "button small", "data-testid": "edit", text: t("agents.edit") });
    const reason = F.el("input", { class: "input", "data-testid": "reject-reason", placeholder: t("agents.reasonPlaceholder"), "aria-label": t("agents.reason"), maxlength: "2000" });
    const reject = F.el("button", { type: "button", class: "button small danger", "data-testid": "reject", text: t("agents.reject") });
    const item = F.el(
      "div",
      { class: "pending-run", "data-testid": "pending-run", "data-id": run.id, "data-agent": run.agent },
      F.el(
        "div",
        { class: "item-head" },
        F.el("span", { class: "mono", text: run.agent }),
        F.el("a", { href: "#", class: "mono small", text: run.id, onclick: (e) => (e.preventDefault(), openRun(run.agent, run.id)) }),
        F.el("span", { class: "muted small", text: F.fmt.ago(run.updated_at) }),
      ),
      asked ? F.el("p", { class: "quote", text: asked.content }) : null,
      calls,
      F.el("div", { class: "form-row" }, approve, edit, reason, reject),
    );
    edit.addEventListener("click", () => {
      for (const box of item.querySelectorAll("textarea")) box.readOnly = false;
      item.querySelector("textarea")?.focus();
      approve.querySelector(".label").textContent = t("agents.approveEdited");
      edit.disabled = true;
    });
    approve.addEventListener("click", () => decide(run, item, "approve"));
    reject.addEventListener("click", () => decide(run, item, "reject", reason.value.trim()));
    return item;
  }

  function editedArguments(item) {
    const edited = {};
    for (const box of item.querySelectorAll("textarea")) {
      if (box.value === box.dataset.original) continue;
      let value;
      try {
        value = JSON.parse(box.value);
      } catch (_) {
        value = null;
      }
      if (!value || typeof value !== "object" || Array.isArray(value)) throw new Error(t("agents.badArguments"));
      edited[box.dataset.call] = value;
    }
    return Object.keys(edited).length ? edited : null;
  }

  async function decide(run, item, action, reason) {
    F.clearError();
    let body;
    try {
      body = action === "approve" ? { arguments: editedArguments(item), stream: true } : { reason: reason || null, stream: true };
    } catch (err) {
      F.showError(err.message);
      return;
    }
    for (const b of item.querySelectorAll("button")) b.disabled = true;
    const base = `/v1/agents/${encodeURIComponent(run.agent)}/runs/${encodeURIComponent(run.id)}`;
    const view = shown && shown.id === run.id ? shown : showRun(run.agent, run.id);
    if (view.lastSeq === 0) setStatus(run.status);
    const answer = post(`${base}/${action}`, body, view);
    answer.then(
      (resp) => {
        if (resp.ok) item.remove();
        else for (const b of item.querySelectorAll("button")) b.disabled = false;
      },
      () => {},
    );
    await stream(view, answer);
  }

  // -- start --------------------------------------------------------------------------------------

  async function load() {
    F.clearError();
    try {
      await loadAgents();
    } catch (err) {
      setMain(false, F.masterNote(err) || "");
      F.showError(err.message);
      return false;
    }
    setMain(true);
    if (agent) selectAgent(agent);
    await loadPending();
    return true;
  }

  $("start").addEventListener("submit", startRun);
  $("refresh").addEventListener("click", load);
  $("runs-status").addEventListener("change", loadRuns);
  F.onKey(() => start());
  F.onLanguage(() => load());

  async function start() {
    await load();
    F.ready();
  }

  start();
})();
