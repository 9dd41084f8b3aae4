/*
 * Traces page: filter recorded calls by model, key, status, cache result and time; totals and charts of
 * requests, latency percentiles, errors and spend over time (GET /v1/traces/stats); the calls, newest
 * first, a page at a time (GET /v1/traces); one call's request, answer, tokens, latency, retries,
 * fallbacks and cost (GET /v1/traces/{id}); drift per model (GET /v1/traces/drift, master key). The
 * filters live in the address (`#model=...&status=error&range=1h`) so a view can be shared.
 */
(function () {
  "use strict";

  const F = window.Forge;
  const t = F.t;
  const $ = (id) => document.getElementById(id);
  const RANGES = { "15m": 900, "1h": 3600, "24h": 86400, "7d": 7 * 86400, "30d": 30 * 86400 };
  const FILTERS = ["model", "key_id", "status", "cache", "range"];
  const SELECTS = { model: "f-model", key_id: "f-key", status: "f-status", cache: "f-cache", range: "f-range" };

  const state = { next: null, facets: null, loading: 0 };
  const count = (v) => (Number.isInteger(v) ? F.fmt.num(v) : v.toFixed(1));

  function filters() {
    const out = {};
    for (const name of FILTERS) out[name] = $(SELECTS[name]).value;
    return out;
  }

  function params(extra) {
    const f = filters();
    const until = Date.now() / 1000;
    return { model: f.model, key_id: f.key_id, status: f.status, cache: f.cache, since: until - RANGES[f.range || "24h"], ...extra };
  }

  function writeHash() {
    const f = filters();
    const keep = Object.entries(f).filter(([k, v]) => v && !(k === "range" && v === "24h"));
    history.replaceState(null, "", keep.length ? `#${new URLSearchParams(keep)}` : location.pathname);
  }

  function readHash() {
    return Object.fromEntries(new URLSearchParams(location.hash.slice(1)));
  }

  function fillSelect(select, values, label, keep) {
    const current = keep || select.value;
    select.replaceChildren(new Option(t("common.all"), ""));
    for (const v of values) select.append(new Option(label ? label(v) : v, v));
    if (current && !values.includes(current)) select.append(new Option(current, current));
    select.value = current || "";
  }

  async function loadFacets(wanted) {
    try {
      state.facets = await F.api("GET", "/v1/traces/facets");
    } catch (err) {
      F.showError(err.message);
      state.facets = { models: [], keys: [] };
    }
    fillSelect($("f-model"), state.facets.models, null, wanted.model);
    fillSelect($("f-key"), state.facets.keys, null, wanted.key_id);
  }

  // -- totals and charts ------------------------------------------------------------------------------

  function tile(label, value, testid) {
    return F.el("div", { class: "tile", "data-testid": testid }, F.el("div", { class: "tile-label", text: label }), F.el("div", { class: "tile-value", text: value }));
  }

  function legend(box, items) {
    box.replaceChildren(...items.map(([name, cls]) => F.el("span", {}, F.el("span", { class: `legend-swatch ${cls}` }), name)));
  }

  async function loadStats() {
    let s;
    try {
      s = await F.api("GET", "/v1/traces/stats" + F.query(params({ buckets: 40 })));
    } catch (err) {
      F.showError(err.message);
      return;
    }
    const total = s.totals;
    $("tiles").replaceChildren(
      tile(t("traces.requests"), F.fmt.num(total.requests), "tile-requests"),
      tile(t("traces.errorRate"), total.requests ? F.fmt.pct(total.errors / total.requests) : "–", "tile-errors"),
      tile(t("traces.p50"), F.fmt.ms(total.p50_ms), "tile-p50"),
      tile(t("traces.p95"), F.fmt.ms(total.p95_ms), "tile-p95"),
      tile(t("traces.spend"), F.fmt.usd(total.cost_usd), "tile-spend"),
      tile(t("traces.tokens"), F.fmt.num(total.prompt_tokens + total.completion_tokens), "tile-tokens"),
    );
    const b = s.buckets;
    const labels = b.map((x) => x.start);
    const span = s.until - s.since;
    const labelFormat = (v) => F.fmt.shortTime(v, span);
    const ok = t("traces.status.ok");
    const err = t("traces.status.error");
    legend($("legend-requests"), [[ok, "series-0"], [err, "series-error"]]);
    F.charts.bars($("chart-requests"), {
      title: t("traces.chartRequests"),
      labels,
      series: [
        { name: ok, values: b.map((x) => x.requests - x.errors), cls: "series-0" },
        { name: err, values: b.map((x) => x.errors), cls: "series-error" },
      ],
      format: count,
      labelFormat,
    });
    legend($("legend-latency"), [["p50", "series-0"], ["p95", "series-1"], ["p99", "series-2"]]);
    F.charts.lines($("chart-latency"), {
      title: t("traces.chartLatency"),
      labels,
      series: [
        { name: "p50", values: b.map((x) => x.p50_ms), cls: "series-0" },
        { name: "p95", values: b.map((x) => x.p95_ms), cls: "series-1" },
        { name: "p99", values: b.map((x) => x.p99_ms), cls: "series-2" },
      ],
      format: (v) => F.fmt.ms(v),
      labelFormat,
    });
    F.charts.bars($("chart-errors"), {
      title: t("traces.chartErrors"),
      labels,
      series: [{ name: err, values: b.map((x) => x.errors), cls: "series-error" }],
      format: count,
      labelFormat,
    });
    F.charts.bars($("chart-spend"), {
      title: t("traces.chartSpend"),
      labels,
      series: [{ name: t("traces.spend"), values: b.map((x) => x.cost_usd), cls: "series-1" }],
      format: (v) => F.fmt.usd(v),
      labelFormat,
    });
  }

  // -- the calls --------------------------------------------------------------------------------------

  function statusBadge(status) {
    return F.el("span", { class: `badge ${status}`, text: t(`traces.status.${status}`) });
  }

  function row(c) {
    const model = c.served_by && c.served_by !== c.model ? `${c.model} → ${c.served_by}` : c.model;
    const tr = F.el(
      "tr",
      { class: "clickable", tabindex: "0", "data-testid": "call", "data-id": c.id, "data-status": c.status },
      F.el("td", { class: "nowrap", text: F.fmt.time(c.created_at) }),
      F.el("td", { class: "nowrap", text: model }),
      F.el("td", {}, statusBadge(c.status)),
      F.el("td", { text: c.cache && c.cache !== "off" ? t(`traces.cache.${c.cache}`) : "" }),
      F.el("td", { class: "num", text: F.fmt.ms(c.latency_ms) }),
      F.el("td", { class: "num", text: `${F.fmt.num(c.prompt_tokens)} / ${F.fmt.num(c.completion_tokens)}` }),
      F.el("td", { class: "num", text: F.fmt.usd(c.cost_usd) }),
      F.el("td", { class: "mono", text: c.key_id || "" }),
      F.el("td", {}, F.el("span", { class: "preview", title: c.prompt_preview, text: c.prompt_preview || c.error || "" })),
    );
    const open = () => openCall(c.id);
    tr.addEventListener("click", open);
    tr.addEventListener("keydown", (event) => {
      if (event.key === "Enter") open();
    });
    return tr;
  }

  async function loadCalls(append) {
    const extra = { limit: 50 };
    if (append && state.next) extra.before = state.next;
    let page;
    try {
      page = await F.api("GET", "/v1/traces" + F.query(params(extra)));
    } catch (err) {
      F.showError(err.message);
      return;
    }
    const body = $("calls").tBodies[0];
    if (!append) body.replaceChildren();
    for (const c of page.data) body.append(row(c));
    state.next = page.next_before;
    $("more").hidden = !page.has_more;
    $("no-calls").hidden = body.rows.length > 0;
  }

  function kv(pairs) {
    const dl = F.el("dl", { class: "kv" });
    for (const [k, v] of pairs) {
      if (v === null || v === undefined || v === "" || (Array.isArray(v) && !v.length)) continue;
      dl.append(F.el("dt", { text: k }), F.el("dd", { text: Array.isArray(v) ? v.join(", ") : String(v) }));
    }
    return dl;
  }

  function requestView(trace) {
    const req = trace.request || {};
    if (Array.isArray(req.messages)) {
      const box = F.el("div", { class: "block" });
      for (const m of req.messages) {
        const content = typeof m.content === "string" ? m.content : JSON.stringify(m.content);
        box.append(F.el("div", { class: "turn" }, F.el("div", { class: "turn-role", text: m.role }), F.el("div", { text: content })));
      }
      return box;
    }
    return F.el("pre", { class: "block", text: req.prompt !== undefined ? String(req.prompt) : JSON.stringify(req, null, 2) });
  }

  async function openCall(id) {
    let trace;
    try {
      trace = await F.api("GET", `/v1/traces/${encodeURIComponent(id)}`);
    } catch (err) {
      F.showError(err.message);
      return;
    }
    const old = $("call-dialog");
    if (old) old.remove();
    const box = F.dialog("call-dialog", `${t("traces.details")} · ${trace.model}`);
    box.classList.add("wide");
    const sampling = trace.request && trace.request.sampling;
    const body = F.el(
      "div",
      { class: "dialog-body", "data-testid": "call-details" },
      kv([
        [t("traces.id"), trace.id],
        [t("traces.time"), F.fmt.time(trace.created_at)],
        [t("traces.status"), t(`traces.status.${trace.status}`)],
        [t("traces.model"), trace.model],
        [t("traces.servedBy"), trace.served_by],
        [t("traces.deployment"), trace.deployment],
        [t("traces.latency"), F.fmt.ms(trace.latency_ms)],
        [t("traces.ttft"), trace.ttft_ms === null ? null : F.fmt.ms(trace.ttft_ms)],
        [t("traces.tokensInOut"), `${trace.prompt_tokens} / ${trace.completion_tokens}`],
        [t("traces.cost"), F.fmt.usd(trace.cost_usd)],
        [t("traces.retries"), trace.retries],
        [t("traces.fallbacks"), trace.fallbacks],
        [t("traces.cache"), trace.cache ? t(`traces.cache.${trace.cache}`) : null],
        [t("traces.finish"), trace.finish_reason],
        [t("traces.stream"), trace.stream ? t("common.yes") : t("common.no")],
        [t("traces.key"), trace.key_id],
        [t("traces.sampling"), sampling && Object.keys(sampling).length ? JSON.stringify(sampling) : null],
      ]),
      trace.error ? [F.el("h3", { class: "small", text: t("traces.error") }), F.el("pre", { class: "block", "data-testid": "call-error", text: trace.error })] : null,
      F.el("h3", { class: "small", text: t("traces.request") }),
      requestView(trace),
      F.el("h3", { class: "small", text: t("traces.answer") }),
      F.el("pre", { class: "block", "data-testid": "call-answer", text: trace.output }),
      trace.tool_calls ? [F.el("h3", { class: "small", text: t("traces.toolCalls") }), F.el("pre", { class: "block", text: JSON.stringify(trace.tool_calls, null, 2) })] : null,
    );
    box.append(body);
    box.showModal();
  }

  // -- drift ------------------------------------------------------------------------------------------

  function signalValue(s) {
    if (s.name.endsWith("_rate")) return (v) => F.fmt.pct(v);
    return (v) => (v === null || v === undefined ? "–" : Number(v).toFixed(2));
  }

  /* A signal's name in the page's language (a signal without a translation: its own name). */
  function signalLabel(name) {
    const key = `traces.signal.${name}`;
    const plain = name.replace(/_/g, " ");
    return t(key) === key ? plain[0].toUpperCase() + plain.slice(1) : t(key);
  }

  async function loadDrift() {
    const out = $("drift-body");
    let d;
    try {
      d = await F.api("GET", "/v1/traces/drift");
    } catch (err) {
      out.replaceChildren(F.el("p", { class: "muted", text: err.status === 403 ? t("traces.driftMaster") : err.message }));
      return;
    }
    if (!d.enabled) {
      out.replaceChildren(F.el("p", { class: "muted", text: t("traces.driftOff") }));
      return;
    }
    if (!d.models.length) {
      out.replaceChildren(F.el("p", { class: "muted", text: t("traces.driftNone") }));
      return;
    }
    const grid = F.el("div", { class: "drift-models" });
    for (const m of d.models) {
      const state = !m.ready ? "" : m.alarm ? "alarm" : "ok";
      const card = F.el(
        "div",
        { class: "drift-model" + (m.alarm ? " alarm" : ""), "data-testid": "drift-model", "data-model": m.model, "data-alarm": String(m.alarm) },
        F.el(
          "div",
          { class: "drift-head" },
          F.el("strong", { text: m.model }),
          m.ready ? F.el("span", { class: `badge ${state}`, text: m.alarm ? t("traces.driftAlarm") : t("traces.driftOk") }) : null,
          F.el("button", { type: "button", class: "button small ghost", text: t("traces.driftReset"), onclick: () => resetDrift(m.model) }),
        ),
      );
      if (!m.ready) {
        card.append(
          F.el("p", { class: "muted small", text: t("traces.driftWaiting", { reference: m.reference_calls, size: d.reference_size, recent: m.recent_calls }) }),
        );
      }
      for (const s of m.signals) {
        const value = signalValue(s);
        const compare = s.reference !== null || s.recent !== null ? t("traces.refVsRecent", { reference: value(s.reference), recent: value(s.recent) }) : s.detail;
        card.append(
          F.el(
            "div",
            { class: "drift-signal" + (s.alarm ? " alarm" : ""), "data-signal": s.name, title: s.detail },
            F.el("span", { text: signalLabel(s.name) }),
            F.el("span", { class: "drift-score", text: s.score === null ? "–" : Number(s.score).toFixed(3) }),
            F.el("span", { class: "muted small", text: [compare, t("traces.threshold", { threshold: s.threshold })].filter(Boolean).join(" · ") }),
          ),
        );
      }
      grid.append(card);
    }
    out.replaceChildren(grid);
  }

  async function resetDrift(model) {
    try {
      await F.api("POST", "/v1/traces/drift/reset", { model });
    } catch (err) {
      F.showError(err.message);
      return;
    }
    await loadDrift();
  }

  // -- wiring -----------------------------------------------------------------------------------------

  async function refresh() {
    F.clearError();
    writeHash();
    state.next = null;
    await Promise.all([loadStats(), loadCalls(false), loadDrift()]);
  }

  for (const id of Object.values(SELECTS)) $(id).addEventListener("change", refresh);
  $("refresh").addEventListener("click", refresh);
  $("more").addEventListener("click", () => loadCalls(true));
  F.onKey(() => start());
  F.onLanguage(() => refresh());

  async function start() {
    const wanted = readHash();
    await loadFacets(wanted);
    for (const name of ["status", "cache", "range"]) if (wanted[name]) $(SELECTS[name]).value = wanted[name];
    await refresh();
    F.ready();
  }

  start();
})();
