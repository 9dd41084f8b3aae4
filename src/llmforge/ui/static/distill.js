/*
 * Distillation page (master key): the routing policies on model names (the share of calls the
 * distilled student answers, changed here; promote to every call; roll back; the online comparison
 * and the escalations and disagreements it collected), the registry of distilled model versions, and
 * the flywheel's stage runs (a train run's loss curve, an eval run's gate with its figures). Reads
 * /v1/distill/*; training itself runs from `llmforge distill`, not from here.
 */
(function () {
  "use strict";

  const F = window.Forge;
  const t = F.t;
  const $ = (id) => document.getElementById(id);
  let runs = [];
  let openRun = null;
  let openFeedback = null;

  function setMain(visible, note) {
    $("page-main").hidden = !visible;
    $("page-off").hidden = visible;
    $("page-off").textContent = note || "";
  }

  async function load() {
    F.clearError();
    let routes, models;
    try {
      [routes, models, runs] = await Promise.all([
        F.api("GET", "/v1/distill/routes").then((b) => b.data),
        F.api("GET", "/v1/distill/models").then((b) => b.data),
        F.api("GET", "/v1/distill/runs?limit=200").then((b) => b.data),
      ]);
    } catch (err) {
      const note = F.masterNote(err);
      setMain(false, note || "");
      if (!note) F.showError(err.message);
      return false;
    }
    setMain(true);
    renderRoutes(routes);
    renderModels(models);
    renderRuns();
    if (openFeedback && routes.some((r) => r.model === openFeedback)) await showFeedback(openFeedback);
    return true;
  }

  // -- routes -------------------------------------------------------------------------------------

  function stateBadge(state) {
    const cls = { canary: "warn", promoted: "ok", rolled_back: "" }[state] ?? "";
    return F.el("span", { class: `badge ${cls}`, "data-testid": "state", text: t(`distill.state.${state}`) });
  }

  function onlineCell(online) {
    const agreement = online.agreement === null || online.agreement === undefined ? "–" : F.fmt.pct(online.agreement);
    return F.el(
      "td",
      { class: "small", "data-testid": "online" },
      F.el("div", { text: t("distill.compared", { n: F.fmt.num(online.compared), agreed: F.fmt.num(online.agreed) }) }),
      F.el("div", { text: `${t("distill.agreement")}: ${agreement}` }),
      F.el("div", { text: `${t("distill.escalations")}: ${F.fmt.num(online.escalations)}` }),
    );
  }

  function renderRoutes(routes) {
    const body = $("routes").tBodies[0];
    body.replaceChildren();
    for (const r of routes) {
      const share = F.el("input", {
        class: "input share-input",
        type: "number",
        min: "0",
        max: "100",
        step: "1",
        inputmode: "numeric",
        value: String(Math.round(r.share * 1000) / 10),
        "aria-label": t("distill.share"),
        "data-testid": "share-input",
      });
      const save = F.el("button", { type: "button", class: "button small", "data-testid": "save-share", text: t("distill.setShare") });
      save.addEventListener("click", () => setShare(r, share.value));
      share.addEventListener("keydown", (e) => {
        if (e.key === "Enter") setShare(r, share.value);
      });
      const bar = F.el("div", { class: "bar" }, F.el("div", { class: "bar-fill" }));
      bar.firstChild.style.width = `${Math.min(100, r.share * 100)}%`;
      const promote = F.el("button", { type: "button", class: "button small primary", "data-testid": "promote", disabled: r.state === "promoted" }, t("distill.promote"));
      promote.addEventListener("click", () => promoteRoute(r));
      const rollback = F.el("button", { type: "button", class: "button small danger", "data-testid": "rollback", disabled: r.share === 0 }, t("distill.rollback"));
      rollback.addEventListener("click", () => rollbackRoute(r));
      const feedback = F.el("button", { type: "button", class: "button small", "data-testid": "show-feedback" }, t("distill.feedback"));
      feedback.addEventListener("click", () => showFeedback(r.model));
      body.append(
        F.el(
          "tr",
          { "data-testid": "route", "data-model": r.model, "data-share": String(r.share), "data-state": r.state },
          F.el("td", { class: "mono nowrap", text: r.model }),
          F.el("td", { class: "mono nowrap", text: r.student }),
          F.el("td", {}, stateBadge(r.state)),
          F.el(
            "td",
            {},
            F.el("div", { class: "share-edit" }, share, F.el("span", { class: "muted", text: "%" }), save),
            bar,
            F.el("div", { class: "muted small", "data-testid": "share", text: t("distill.shareNow", { share: F.fmt.pct(r.share) }) }),
          ),
          onlineCell(r.online),
          F.el("td", {}, F.el("div", { class: "row-actions" }, promote, rollback, feedback)),
        ),
      );
    }
    $("no-routes").hidden = routes.length > 0;
  }

  function routeBody(r, share) {
    return {
      student: r.student,
      share,
      min_logprob: r.min_logprob,
      shadow: r.shadow,
      promote_min: r.promote_min,
      promote_agreement: r.promote_agreement,
      auto_promote: r.auto_promote,
    };
  }

  async function setShare(r, raw) {
    F.clearError();
    const value = Number(raw);
    if (raw === "" || !(value >= 0 && value <= 100)) {
      F.showError(t("distill.badShare"));
      return;
    }
    try {
      await F.api("PUT", `/v1/distill/routes/${encodeURIComponent(r.model)}`, routeBody(r, value / 100));
    } catch (err) {
      F.showError(err.message);
      return;
    }
    await load();
  }

  async function promoteRoute(r) {
    if (!(await F.confirm(t("distill.promoteConfirm", { model: r.model, student: r.student }), t("distill.promote")))) return;
    try {
      await F.api("POST", `/v1/distill/routes/${encodeURIComponent(r.model)}/promote`, { force: false });
    } catch (err) {
      F.showError(err.message);
      return;
    }
    await load();
  }

  async function rollbackRoute(r) {
    if (!(await F.confirm(t("distill.rollbackConfirm", { model: r.model }), t("distill.rollback")))) return;
    try {
      await F.api("POST", `/v1/distill/routes/${encodeURIComponent(r.model)}/rollback`, {});
    } catch (err) {
      F.showError(err.message);
      return;
    }
    await load();
  }

  async function showFeedback(model) {
    const box = $("feedback");
    let items;
    try {
      items = (await F.api("GET", `/v1/distill/routes/${encodeURIComponent(model)}/feedback?limit=200`)).data;
    } catch (err) {
      F.showError(err.message);
      return;
    }
    openFeedback = model;
    const close = F.el("button", { type: "button", class: "button small", text: t("common.close") });
    close.addEventListener("click", () => {
      openFeedback = null;
      box.hidden = true;
    });
    const head = F.el("div", { class: "panel-head" }, F.el("h2", { text: t("distill.feedbackOf", { model }) }), F.el("span", { class: "muted small", text: t("distill.feedbackHelp") }), close);
    const rows = items.map((f) => {
      const asked = f.messages.filter((m) => m.role === "user").pop();
      return F.el(
        "tr",
        { "data-testid": "feedback-item", "data-kind": f.kind },
        F.el("td", {}, F.el("span", { class: "badge " + (f.kind === "escalation" ? "warn" : "failed"), text: t(`distill.kind.${f.kind}`) })),
        F.el("td", { class: "small", text: f.reason || "" }),
        F.el("td", {}, F.el("span", { class: "preview", title: asked ? asked.content : "", text: asked ? asked.content : "" })),
        F.el("td", { class: "mono", text: f.student_answer ?? "–" }),
        F.el("td", { class: "mono", text: f.teacher_answer ?? "–" }),
        F.el("td", { class: "nowrap small", text: F.fmt.time(f.created_at) }),
      );
    });
    const table = F.el(
      "table",
      { class: "data" },
      F.el(
        "thead",
        {},
        F.el("tr", {}, ...["distill.kind", "distill.reason", "distill.prompt", "distill.studentSaid", "distill.teacherSaid", "distill.created"].map((k) => F.el("th", { text: t(k) }))),
      ),
      F.el("tbody", {}, rows),
    );
    box.replaceChildren(head, items.length ? F.el("div", { class: "table-wrap" }, table) : F.el("p", { class: "empty-note", text: t("distill.noFeedback") }));
    box.hidden = false;
  }

  // -- models -------------------------------------------------------------------------------------

  function renderModels(models) {
    const body = $("models").tBodies[0];
    body.replaceChildren();
    for (const m of models) {
      const scores = Object.entries(m.scores || {}).map(([k, v]) => F.el("span", { class: "badge", text: `${k} ${v === null ? "–" : F.fmt.score(v)}` }));
      const l = m.lineage;
      body.append(
        F.el(
          "tr",
          { "data-testid": "model", "data-id": m.id, "data-status": m.status },
          F.el("td", { class: "mono nowrap", text: m.id }),
          F.el("td", {}, F.el("span", { class: "badge " + ({ active: "ok", failed: "failed" }[m.status] || ""), text: t(`distill.vstatus.${m.status}`) })),
          F.el("td", {}, F.el("div", { class: "chips" }, scores)),
          F.el(
            "td",
            { class: "small" },
            F.el("div", { text: `${t("distill.teacher")}: ${l.teacher}` }),
            F.el("div", { text: `${t("distill.base")}: ${F.fmt.fileName(l.base)}` }),
            F.el("div", { class: "muted mono", text: `${l.train_run} → ${l.eval_run}` }),
          ),
          F.el("td", { class: "small" }, F.el("div", { class: "mono", text: m.path ? F.fmt.fileName(m.path) : "–" }), m.quant ? F.el("span", { class: "badge", text: m.quant }) : null, m.error ? F.el("div", { class: "reason", text: m.error }) : null),
          F.el("td", { class: "nowrap small", text: F.fmt.time(m.created_at) }),
        ),
      );
    }
    $("no-models").hidden = models.length > 0;
  }

  // -- runs ---------------------------------------------------------------------------------------

  function gateBadge(result) {
    if (!result || result.passed === undefined) return null;
    return F.el("span", { class: "badge " + (result.passed ? "ok" : "failed"), "data-testid": "gate", text: result.passed ? t("distill.gatePassed") : t("distill.gateFailed") });
  }

  function summary(run) {
    const r = run.result || {};
    if (run.error) return F.el("span", { class: "preview reason", title: run.error, text: run.error });
    if (run.stage === "train" && r.losses) return F.el("span", { class: "small", text: t("distill.trainSummary", { steps: r.losses.length, loss: r.final_loss === null || r.final_loss === undefined ? "–" : r.final_loss.toFixed(3) }) });
    if (run.stage === "eval" && r.passed !== undefined) return gateBadge(r);
    if (run.stage === "export" && r.model) return F.el("span", { class: "mono small", text: `${r.model}@v${r.version ?? "?"}${r.quant ? " · " + r.quant : ""}` });
    if (r.counts) {
      const n = Object.values(r.counts).reduce((a, b) => a + b, 0);
      const cost = run.stage === "label" && r.cost_usd !== undefined ? ` · ${F.fmt.usd(r.cost_usd)}` : "";
      return F.el("span", { class: "small", text: t("distill.rows", { n: F.fmt.num(n) }) + cost });
    }
    return null;
  }

  function renderRuns() {
    const body = $("runs").tBodies[0];
    body.replaceChildren();
    for (const run of runs) {
      const statusCls = { done: "ok", failed: "failed", running: "running" }[run.status] || "";
      const row = F.el(
        "tr",
        { class: "clickable" + (openRun === run.id ? " selected" : ""), tabindex: "0", "data-testid": "run", "data-id": run.id, "data-stage": run.stage },
        F.el("td", {}, F.el("div", { class: "mono small", text: run.id }), F.el("div", { class: "muted small", text: run.flywheel })),
        F.el("td", {}, F.el("span", { class: "badge accent", text: t(`distill.stage.${run.stage}`) })),
        F.el("td", {}, F.el("span", { class: `badge ${statusCls}`, text: t(`distill.rstatus.${run.status}`) })),
        F.el("td", {}, summary(run)),
        F.el("td", { class: "num", text: run.wall_s === null || run.wall_s === undefined ? "–" : `${run.wall_s.toFixed(1)} s` }),
        F.el("td", { class: "nowrap small", text: F.fmt.time(run.created_at) }),
      );
      row.addEventListener("click", () => showRun(run.id));
      row.addEventListener("keydown", (e) => {
        if (e.key === "Enter") showRun(run.id);
      });
      body.append(row);
    }
    $("no-runs").hidden = runs.length > 0;
    if (openRun && runs.some((r) => r.id === openRun)) showRun(openRun);
  }

  function tile(label, value, testid) {
    return F.el("div", { class: "tile", "data-testid": testid || null }, F.el("div", { class: "tile-label", text: label }), F.el("div", { class: "tile-value", text: value }));
  }

  function showRun(id) {
    const run = runs.find((r) => r.id === id);
    if (!run) return;
    openRun = id;
    for (const row of $("runs").tBodies[0].rows) row.classList.toggle("selected", row.dataset.id === id);
    const box = $("run-detail");
    const r = run.result || {};
    const close = F.el("button", { type: "button", class: "button small", text: t("common.close") });
    close.addEventListener("click", () => {
      openRun = null;
      box.hidden = true;
      for (const row of $("runs").tBodies[0].rows) row.classList.remove("selected");
    });
    const parts = [
      F.el("div", { class: "panel-head" }, F.el("h2", { class: "mono", text: run.id }), F.el("span", { class: "badge accent", text: t(`distill.stage.${run.stage}`) }), close),
    ];
    if (run.parent) parts.push(F.el("p", { class: "muted small", text: t("distill.parent", { parent: run.parent }) }));
    if (run.error) parts.push(F.el("p", { class: "reason", "data-testid": "run-error", text: run.error }));
    if (run.stage === "train" && Array.isArray(r.losses)) {
      parts.push(
        F.el(
          "div",
          { class: "tiles" },
          tile(t("distill.steps"), F.fmt.num(r.losses.length)),
          tile(t("distill.firstLoss"), r.losses.length ? r.losses[0].toFixed(3) : "–"),
          tile(t("distill.finalLoss"), r.final_loss === null || r.final_loss === undefined ? "–" : r.final_loss.toFixed(3), "final-loss"),
          tile(t("distill.examples"), F.fmt.num(r.examples)),
          tile(t("distill.device"), r.device || "–"),
        ),
      );
      const chart = F.el("div", { class: "chart-box", "data-testid": "loss-chart" });
      parts.push(F.el("div", { class: "chart" }, F.el("h3", { text: t("distill.lossCurve") }), chart));
      box.replaceChildren(...parts);
      box.hidden = false;
      F.charts.lines(chart, {
        title: t("distill.lossCurve"),
        labels: r.losses.map((_, i) => i + 1),
        series: [{ name: t("distill.loss"), values: r.losses, cls: "series-0" }],
        format: (v) => (v >= 10 ? v.toFixed(0) : v.toFixed(2)),
        labelFormat: (step) => t("distill.step", { n: step }),
      });
      return;
    }
    if (run.stage === "eval" && r.passed !== undefined) {
      const ci = r.ci_low === null || r.ci_low === undefined ? "–" : `[${F.fmt.score(r.ci_low)}, ${F.fmt.score(r.ci_high)}]`;
      parts.push(
        F.el(
          "p",
          { class: "gate-line", "data-testid": "gate-line" },
          gateBadge(r),
          " ",
          t(r.passed ? "distill.gateLinePassed" : "distill.gateLineFailed", {
            metric: r.metric,
            student: F.fmt.score(r.student_score),
            teacher: F.fmt.score(r.teacher_score),
            share: r.gate_share,
          }),
        ),
        F.el(
          "div",
          { class: "tiles" },
          tile(t("distill.studentScore"), F.fmt.score(r.student_score), "student-score"),
          tile(t("distill.teacherScore"), F.fmt.score(r.teacher_score), "teacher-score"),
          tile(t("distill.ratio"), r.ratio === null || r.ratio === undefined ? "–" : F.fmt.pct(r.ratio), "ratio"),
          tile(t("distill.gateShare"), F.fmt.pct(r.gate_share)),
          tile(t("distill.interval"), ci),
          tile(t("distill.winsLosses"), `${r.wins ?? 0} / ${r.losses ?? 0}`),
          tile(t("distill.cases"), F.fmt.num(r.cases)),
          tile(t("distill.latency"), F.fmt.ms(r.student_latency_p50_ms)),
        ),
        F.el("p", { class: "muted small", text: t("distill.evalRuns", { student: r.student_run, teacher: r.teacher_run }) }),
      );
    } else {
      parts.push(F.el("pre", { class: "block mono", text: JSON.stringify(r, null, 2) }));
    }
    box.replaceChildren(...parts);
    box.hidden = false;
  }

  $("refresh").addEventListener("click", load);
  F.onKey(() => start());
  F.onLanguage(() => load());

  async function start() {
    if (await load()) {
      const train = runs.find((r) => r.stage === "train" && r.result && r.result.losses);
      if (!openRun && train) showRun(train.id);
    }
    F.ready();
  }

  start();
})();
