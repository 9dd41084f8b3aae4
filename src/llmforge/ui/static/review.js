/*
 * Review queue page (master key): the texts the guards flagged and a sample of those they allowed,
 * each with the guard's verdict, score and the judge's score; a person confirms the guard ("right")
 * or overrides it ("wrong") with an optional note, which labels the text for retraining and is a row
 * of the audit log. Decided items can be listed and exported as labelled JSONL. Reads
 * /v1/guard/reviews; the bare gateway's minimal page at /guard/review redirects here.
 */
(function () {
  "use strict";

  const F = window.Forge;
  const t = F.t;
  const $ = (id) => document.getElementById(id);

  function setMain(visible, note) {
    $("page-main").hidden = !visible;
    $("page-off").hidden = visible;
    $("page-off").textContent = note || "";
  }

  async function load() {
    F.clearError();
    let items;
    try {
      const q = F.query({ status: $("f-status").value, guard: $("f-guard").value.trim(), limit: 200 });
      items = (await F.api("GET", `/v1/guard/reviews${q}`)).data;
    } catch (err) {
      const note = F.masterNote(err);
      setMain(false, note || "");
      if (!note) F.showError(err.message);
      return false;
    }
    setMain(true);
    $("items").replaceChildren(...items.map(item));
    $("no-items").hidden = items.length > 0;
    return true;
  }

  function score(label, value) {
    return F.el("span", { class: "badge", text: `${label} ${value === null || value === undefined ? "–" : Number(value).toFixed(2)}` });
  }

  function item(r) {
    const verdict = r.flagged ? F.el("span", { class: "badge failed", text: t("review.flagged", { action: r.action }) }) : F.el("span", { class: "badge", text: t("review.sampled") });
    const head = F.el(
      "div",
      { class: "item-head" },
      F.el("span", { class: "badge accent", text: r.guard }),
      F.el("span", { class: "muted small", text: `${r.guard_type} · ${t(`review.direction.${r.direction}`)}${r.code ? " · " + r.code : ""}` }),
      verdict,
      score(t("review.score"), r.score),
      score(t("review.judge"), r.judge_score),
      r.model ? F.el("span", { class: "mono small", text: r.model }) : null,
      F.el("span", { class: "muted small", text: F.fmt.ago(r.created_at) }),
    );
    const parts = [head, F.el("p", { class: "quote", "data-testid": "review-text", text: r.text })];
    if (r.status === "decided") {
      parts.push(
        F.el(
          "p",
          { class: "small", "data-testid": "decision" },
          F.el("span", { class: "badge " + (r.decision === "confirm" ? "ok" : "warn"), text: r.decision === "confirm" ? t("review.right") : t("review.wrong") }),
          " ",
          t("review.decidedBy", { by: r.decided_by || "–", when: r.decided_at ? F.fmt.time(r.decided_at) : "–" }),
          r.note ? F.el("span", { class: "muted", text: ` · ${r.note}` }) : null,
        ),
      );
    } else {
      const note = F.el("input", { class: "input grow", "data-testid": "note", maxlength: "4000", placeholder: t("review.notePlaceholder"), "aria-label": t("review.note") });
      const right = F.el("button", { type: "button", class: "button small primary", "data-testid": "confirm" }, F.icon("check"), F.el("span", { text: t("review.right") }));
      const wrong = F.el("button", { type: "button", class: "button small danger", "data-testid": "override" }, F.icon("close"), F.el("span", { text: t("review.wrong") }));
      right.addEventListener("click", () => decide(r, "confirm", note.value.trim(), box));
      wrong.addEventListener("click", () => decide(r, "override", note.value.trim(), box));
      parts.push(F.el("div", { class: "form-row" }, right, wrong, note));
    }
    const box = F.el("div", { class: "review-item", "data-testid": "review", "data-id": r.id, "data-status": r.status }, ...parts);
    return box;
  }

  async function decide(r, decision, note, box) {
    F.clearError();
    for (const b of box.querySelectorAll("button")) b.disabled = true;
    try {
      await F.api("POST", `/v1/guard/reviews/${encodeURIComponent(r.id)}`, { decision, note: note || null });
    } catch (err) {
      F.showError(err.message);
      for (const b of box.querySelectorAll("button")) b.disabled = false;
      return;
    }
    await load();
  }

  async function exportLabelled() {
    F.clearError();
    try {
      await F.download("/v1/guard/reviews/export", "guard-reviews.jsonl");
    } catch (err) {
      F.showError(err.message);
    }
  }

  $("f-status").addEventListener("change", load);
  $("f-guard").addEventListener("change", load);
  $("export").prepend(F.icon("download"));
  $("export").addEventListener("click", exportLabelled);
  $("refresh").addEventListener("click", load);
  F.onKey(() => start());
  F.onLanguage(() => load());

  async function start() {
    await load();
    F.ready();
  }

  start();
})();
