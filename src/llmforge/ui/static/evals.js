/*
 * Evaluations page: the runs (GET /v1/evals/runs, refreshed while one is running), one run's metrics and
 * cases with each score and the judge's reasoning (GET /v1/evals/runs/{id}), two runs compared per metric
 * with paired-bootstrap 95% intervals, a chart of them and the cases side by side (GET
 * /v1/evals/compare), and a form that starts a run of a chat model on a JSONL dataset (POST
 * /v1/evals/runs). The HTML report opens in a new tab.
 */
(function () {
  "use strict";

  const F = window.Forge;
  const t = F.t;
  const $ = (id) => document.getElementById(id);
  const METRICS = ["exact_match", "token_f1", "rouge_l", "json_valid", "rubric", "answer_relevancy", "faithfulness"];
  const JUDGED = new Set(["rubric", "answer_relevancy", "faithfulness", "pairwise"]);
  const DEFAULT_METRICS = new Set(["exact_match", "token_f1"]);
  const POLL_MS = 1000;

  const state = { runs: [], selected: [], open: null, poll: null };

  function runPath(id, rest) {
    return `/v1/evals/runs/${encodeURIComponent(id)}${rest || ""}`;
  }

  function statusBadge(status) {
    const cls = status === "done" ? "ok" : status;
    return F.el("span", { class: `badge ${cls}`, text: t(`evals.status.${status}`) });
  }

  function summaryText(run) {
    return run.metrics
      .map((m) => {
        const s = run.summary && run.summary[m];
        return `${m} ${s && s.mean !== null && s.mean !== undefined ? s.mean.toFixed(3) : "–"}`;
      })
      .join(" · ");
  }

  // -- runs -------------------------------------------------------------------------------------------

  async function loadRuns() {
    try {
      state.runs = (await F.api("GET", "/v1/evals/runs?limit=100")).data || [];
    } catch (err) {
      F.showError(err.message);
      return;
    }
    state.selected = state.selected.filter((id) => state.runs.some((r) => r.id === id));
    renderRuns();
    const running = state.runs.some((r) => r.status === "running");
    clearTimeout(state.poll);
    if (running) state.poll = setTimeout(refresh, POLL_MS);
  }

  function renderRuns() {
    const body = $("runs").tBodies[0];
    body.replaceChildren();
    for (const r of state.runs) {
      const box = F.el("input", {
        type: "checkbox",
        "aria-label": t("evals.select", { id: r.id }),
        "data-testid": "select-run",
        checked: state.selected.includes(r.id),
      });
      box.addEventListener("click", (event) => event.stopPropagation());
      box.addEventListener("change", () => toggle(r.id, box.checked));
      const tr = F.el(
        "tr",
        { class: "clickable" + (state.open === r.id ? " selected" : ""), "data-testid": "run", "data-id": r.id, tabindex: "0" },
        F.el("td", {}, box),
        F.el("td", { class: "mono", text: r.id }),
        F.el("td", { text: r.target }),
        F.el("td", { text: r.dataset }),
        F.el("td", { class: "small", text: summaryText(r) }),
        F.el("td", {}, statusBadge(r.status)),
        F.el("td", { class: "num", text: `${r.done} / ${r.cases}` }),
        F.el("td", { class: "nowrap", text: F.fmt.ago(r.created_at) }),
      );
      tr.addEventListener("click", () => openRun(r.id));
      tr.addEventListener("keydown", (event) => event.key === "Enter" && openRun(r.id));
      body.append(tr);
    }
    $("no-runs").hidden = state.runs.length > 0;
    $("compare").disabled = state.selected.length !== 2;
  }

  function toggle(id, on) {
    state.selected = state.selected.filter((x) => x !== id);
    if (on) state.selected.push(id);
    if (state.selected.length > 2) state.selected.shift();
    renderRuns();
  }

  // -- one run ----------------------------------------------------------------------------------------

  function judgeReasons(score) {
    const judgements = (score.details && score.details.judgements) || [];
    return judgements.map((j) => j.reasoning).filter(Boolean);
  }

  function scoreCell(score) {
    if (!score) return F.el("td", { text: "–" });
    if (score.error) return F.el("td", { class: "reason", text: t("evals.scoreError", { error: score.error }) });
    const reasons = judgeReasons(score);
    return F.el(
      "td",
      {},
      F.el(
        "div",
        { class: "score-cell" },
        F.el("strong", { text: F.fmt.score(score.value) }),
        ...reasons.map((r) => F.el("span", { class: "reason", "data-testid": "judge-reason", text: r })),
      ),
    );
  }

  function text(value) {
    if (value === null || value === undefined) return "";
    if (typeof value === "string") return value;
    if (Array.isArray(value)) return value.map((m) => (m && m.content !== undefined ? `${m.role}: ${m.content}` : JSON.stringify(m))).join("\n");
    return JSON.stringify(value);
  }

  async function openReport(id) {
    try {
      const resp = await fetch(runPath(id, "/report"), { headers: F.authHeaders({}) });
      if (!resp.ok) throw await F.errorFrom(resp);
      const url = URL.createObjectURL(new Blob([await resp.text()], { type: "text/html" }));
      window.open(url, "_blank", "noopener");
      setTimeout(() => URL.revokeObjectURL(url), 60000);
    } catch (err) {
      F.showError(err.message);
    }
  }

  async function openRun(id) {
    F.clearError();
    let run;
    try {
      run = await F.api("GET", runPath(id));
    } catch (err) {
      F.showError(err.message);
      return;
    }
    state.open = id;
    renderRuns();
    const panel = $("detail");
    const cards = F.el("div", { class: "metric-cards" });
    for (const m of run.metrics) {
      const s = run.summary[m] || {};
      cards.append(
        F.el(
          "div",
          { class: "tile", "data-testid": "metric", "data-metric": m },
          F.el("div", { class: "tile-label", text: m }),
          F.el("div", { class: "tile-value", text: F.fmt.score(s.mean) }),
          F.el("div", { class: "muted small", text: `${t("evals.std", { std: (s.std || 0).toFixed(3) })} · ${t("evals.scored", { scored: s.scored || 0, errors: s.errors || 0 })}` }),
        ),
      );
    }
    const head = F.el(
      "tr",
      {},
      F.el("th", { text: t("evals.case") }),
      F.el("th", { text: t("evals.input") }),
      F.el("th", { text: t("evals.expected") }),
      F.el("th", { text: t("evals.output") }),
      ...run.metrics.map((m) => F.el("th", { text: m })),
    );
    const rows = (run.results || []).map((r) =>
      F.el(
        "tr",
        { "data-testid": "case", "data-case": r.case_id },
        F.el("td", { class: "mono", text: r.case_id }),
        F.el("td", { class: "small", text: text(r.case.input) }),
        F.el("td", { class: "small", text: text(r.case.expected) }),
        F.el("td", { class: "small", text: r.error ? t("evals.caseError", { error: r.error }) : r.output.text }),
        ...run.metrics.map((m) => scoreCell(r.scores[m])),
      ),
    );
    panel.replaceChildren(
      F.el(
        "div",
        { class: "panel-head" },
        F.el("h2", { class: "mono", text: run.id }),
        statusBadge(run.status),
        F.el("button", { type: "button", class: "button small", onclick: () => openReport(run.id) }, F.icon("external"), F.el("span", { text: t("evals.report") })),
      ),
      F.el("p", { class: "muted small", text: `${t("evals.target")}: ${run.target} · ${t("evals.dataset")}: ${run.dataset}${run.judge ? ` · ${t("evals.judge")}: ${run.judge}` : ""}` }),
      cards,
      F.el("div", { class: "table-wrap" }, F.el("table", { class: "data", "data-testid": "cases" }, F.el("thead", {}, head), F.el("tbody", {}, rows))),
    );
    panel.hidden = false;
    panel.scrollIntoView({ block: "nearest" });
  }

  // -- comparison -------------------------------------------------------------------------------------

  function signed(v) {
    if (v === null || v === undefined) return "–";
    return (v > 0 ? "+" : "") + v.toFixed(3);
  }

  async function compare() {
    if (state.selected.length !== 2) return;
    F.clearError();
    // the older run is the baseline
    const [a, b] = [...state.selected].sort(
      (x, y) => state.runs.find((r) => r.id === x).created_at - state.runs.find((r) => r.id === y).created_at,
    );
    let c;
    let runs;
    try {
      [c, ...runs] = await Promise.all([
        F.api("GET", `/v1/evals/compare${F.query({ a, b })}`),
        F.api("GET", runPath(a)),
        F.api("GET", runPath(b)),
      ]);
    } catch (err) {
      F.showError(err.message);
      return;
    }
    const panel = $("comparison");
    const table = F.el(
      "table",
      { class: "data", "data-testid": "deltas" },
      F.el(
        "thead",
        {},
        F.el(
          "tr",
          {},
          ...[t("evals.metrics"), t("evals.baseline"), t("evals.candidate"), t("evals.delta"), t("evals.interval"), "", ""].map((h) =>
            F.el("th", { text: h }),
          ),
        ),
      ),
      F.el(
        "tbody",
        {},
        c.metrics.map((m) =>
          F.el(
            "tr",
            { "data-testid": "delta", "data-metric": m.metric, "data-significant": String(m.significant) },
            F.el("td", { text: m.metric }),
            F.el("td", { class: "num", text: F.fmt.score(m.mean_a) }),
            F.el("td", { class: "num", text: F.fmt.score(m.mean_b) }),
            F.el("td", { class: "num " + (m.significant ? (m.delta > 0 ? "delta-pos" : "delta-neg") : ""), text: signed(m.delta) }),
            F.el("td", { class: "num", text: m.ci_low === null ? "–" : `[${signed(m.ci_low)}, ${signed(m.ci_high)}]` }),
            F.el("td", {}, F.el("span", { class: "badge " + (m.significant ? "accent" : ""), text: m.significant ? t("evals.significant") : t("evals.notSignificant") })),
            F.el("td", { class: "small muted", text: t("evals.winsLosses", { wins: m.wins, losses: m.losses, ties: m.ties }) }),
          ),
        ),
      ),
    );
    const chart = F.el("div", { class: "chart-box intervals", "data-testid": "delta-chart" });
    // per case, for every shared metric
    const byCase = new Map();
    for (const [side, run] of [["a", runs[0]], ["b", runs[1]]]) {
      for (const r of run.results || []) {
        if (!byCase.has(r.case_id)) byCase.set(r.case_id, { a: null, b: null });
        byCase.get(r.case_id)[side] = r;
      }
    }
    const metrics = c.metrics.map((m) => m.metric);
    const value = (r, m) => (r && r.scores[m] && r.scores[m].value !== null ? r.scores[m].value : null);
    const caseRows = [...byCase.entries()].map(([id, pair]) =>
      F.el(
        "tr",
        { "data-testid": "case-pair", "data-case": id },
        F.el("td", { class: "mono", text: id }),
        ...metrics.flatMap((m) => {
          const va = value(pair.a, m);
          const vb = value(pair.b, m);
          const d = va !== null && vb !== null ? vb - va : null;
          return [
            F.el("td", { class: "num", text: `${F.fmt.score(va)} → ${F.fmt.score(vb)}` }),
            F.el("td", { class: "num " + (d > 0 ? "delta-pos" : d < 0 ? "delta-neg" : ""), text: signed(d) }),
          ];
        }),
      ),
    );
    panel.replaceChildren(
      F.el("div", { class: "panel-head" }, F.el("h2", { text: t("evals.comparison", { a, b }) })),
      F.el("p", { class: "muted small", text: t("evals.shared", { shared: c.shared_cases, onlyA: c.only_a, onlyB: c.only_b }) }),
      F.el("div", { class: "table-wrap" }, table),
      F.el("h3", { class: "small muted", text: t("evals.chartDelta") }),
      chart,
      F.el("h3", { class: "small muted", text: t("evals.perCase") }),
      F.el(
        "div",
        { class: "table-wrap" },
        F.el(
          "table",
          { class: "data" },
          F.el("thead", {}, F.el("tr", {}, F.el("th", { text: t("evals.case") }), ...metrics.flatMap((m) => [F.el("th", { class: "num", text: m }), F.el("th", { class: "num", text: t("evals.delta") })]))),
          F.el("tbody", {}, caseRows),
        ),
      ),
    );
    panel.hidden = false;
    F.charts.intervals(chart, {
      title: t("evals.chartDelta"),
      rows: c.metrics.map((m) => ({ label: m.metric, value: m.delta, low: m.ci_low, high: m.ci_high, significant: m.significant })),
      format: (v) => signed(v),
    });
    panel.scrollIntoView({ block: "nearest" });
  }

  // -- starting a run ---------------------------------------------------------------------------------

  async function loadModels() {
    let models = [];
    try {
      models = ((await F.api("GET", "/v1/models")).data || []).filter((m) => !m.llmforge || m.llmforge.kind === "chat");
    } catch (err) {
      F.showError(err.message);
    }
    const model = $("run-model");
    const judge = $("run-judge");
    const keep = [model.value, judge.value];
    model.replaceChildren(...models.map((m) => new Option(m.id, m.id)));
    judge.replaceChildren(new Option(t("evals.judgeNone"), ""), ...models.map((m) => new Option(m.id, m.id)));
    if (keep[0]) model.value = keep[0];
    if (keep[1]) judge.value = keep[1];
  }

  function renderMetricChecks() {
    const box = $("metric-checks");
    const checked = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
    const wanted = checked.size ? checked : DEFAULT_METRICS;
    box.replaceChildren(
      ...METRICS.map((m) =>
        F.el("label", {}, F.el("input", { type: "checkbox", value: m, name: "metric", checked: wanted.has(m) }), F.el("span", { class: "mono", text: m })),
      ),
    );
  }

  async function start(event) {
    event.preventDefault();
    F.clearError();
    const status = $("start-status");
    status.textContent = "";
    const file = $("dataset-file").files[0];
    const dataset = file ? await file.text() : $("dataset-text").value;
    if (!dataset.trim()) {
      F.showError(t("evals.pickFile"));
      return;
    }
    const metrics = [...$("metric-checks").querySelectorAll("input:checked")].map((i) => i.value);
    const judge = $("run-judge").value || null;
    if (metrics.some((m) => JUDGED.has(m)) && !judge) {
      F.showError(t("evals.judgeNeeded"));
      return;
    }
    const name = ($("dataset-name").value || (file && file.name) || "dataset").trim();
    $("start-button").disabled = true;
    try {
      const run = await F.api("POST", "/v1/evals/runs", { dataset, dataset_name: name, model: $("run-model").value, metrics, judge });
      status.textContent = t("evals.started", { id: run.id });
    } catch (err) {
      F.showError(err.message);
    } finally {
      $("start-button").disabled = false;
    }
    await loadRuns();
  }

  // -- wiring -----------------------------------------------------------------------------------------

  async function refresh() {
    await loadRuns();
    if (state.open && !$("detail").hidden) {
      const run = state.runs.find((r) => r.id === state.open);
      if (run) await openRun(state.open);
    }
  }

  $("compare").addEventListener("click", compare);
  $("refresh").addEventListener("click", refresh);
  $("start").addEventListener("submit", start);
  $("dataset-file").addEventListener("change", () => {
    const file = $("dataset-file").files[0];
    if (file) $("dataset-name").value = file.name.replace(/\.jsonl?$/i, "");
  });
  F.onKey(() => Promise.all([loadRuns(), loadModels()]));
  F.onLanguage(() => {
    renderRuns();
    loadModels();
  });

  async function boot() {
    renderMetricChecks();
    await Promise.all([loadRuns(), loadModels()]);
    F.ready();
  }

  boot();
})();
