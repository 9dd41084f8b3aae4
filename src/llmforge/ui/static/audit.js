/*
 * Audit log page (master key): whether the hash chain holds (GET /v1/audit/verify: OK, or each
 * problem with the row it shows at, those rows marked in the list; optionally against a head hash
 * kept from before), the entries in order with filters (kind, after a row) and paging, and the whole
 * log exported as JSON lines with its head (fetched with the key, saved as a file).
 */
(function () {
  "use strict";

  const F = window.Forge;
  const t = F.t;
  const $ = (id) => document.getElementById(id);
  const PAGE = 100;
  let broken = new Set();
  let last = 0;

  function setMain(visible, note) {
    $("page-main").hidden = !visible;
    $("page-off").hidden = visible;
    $("page-off").textContent = note || "";
  }

  async function verify() {
    F.clearError();
    const expect = $("expect-head").value.trim();
    const result = await F.api("GET", `/v1/audit/verify${F.query({ expect_head: expect })}`);
    const box = $("verify");
    box.className = "verify " + (result.ok ? "ok" : "broken");
    box.dataset.ok = String(result.ok);
    box.replaceChildren(
      F.el("span", { class: "verify-mark", "data-testid": "verify-status", text: result.ok ? `✓ ${t("audit.ok")}` : `✗ ${t("audit.broken")}` }),
      F.el("span", { class: "small", text: t("audit.rows", { n: F.fmt.num(result.rows), head: F.fmt.num(result.head_seq) }) }),
      F.el("span", { class: "small muted" }, `${t("audit.head")}: `, F.el("code", { class: "mono hash", "data-testid": "head-hash", text: result.head_hash })),
    );
    broken = new Set(result.problems.map((p) => p.seq));
    const list = $("problems");
    list.replaceChildren(
      ...result.problems.map((p) => F.el("li", { "data-testid": "problem", "data-seq": String(p.seq), "data-kind": p.kind }, F.el("strong", { text: t("audit.problemAt", { seq: p.seq, kind: t(`audit.problem.${p.kind}`) }) }), " ", p.message)),
    );
    list.hidden = result.problems.length === 0;
    for (const row of $("entries").tBodies[0].rows) row.classList.toggle("broken", broken.has(Number(row.dataset.seq)));
  }

  function entryRow(e) {
    const data = JSON.stringify(e.data);
    return F.el(
      "tr",
      { "data-testid": "entry", "data-seq": String(e.seq), "data-kind": e.kind, class: broken.has(e.seq) ? "broken" : null },
      F.el("td", { class: "num", text: String(e.seq) }),
      F.el("td", { class: "nowrap small", text: F.fmt.time(e.at) }),
      F.el("td", {}, F.el("span", { class: "badge accent", text: e.kind })),
      F.el("td", { class: "mono small", text: e.actor || "–" }),
      F.el("td", { class: "mono small" }, F.el("span", { class: "preview", title: e.subject || "", text: e.subject || "–" })),
      F.el("td", { class: "mono small" }, F.el("span", { class: "preview", title: data, text: data })),
      F.el("td", { class: "mono small", title: e.hash, text: e.hash.slice(0, 12) + "…" }),
    );
  }

  async function entries(append) {
    const after = append ? last : Number($("f-after").value || 0);
    const found = (await F.api("GET", `/v1/audit/entries${F.query({ after, limit: PAGE, kind: $("f-kind").value.trim() })}`)).data;
    const body = $("entries").tBodies[0];
    if (!append) body.replaceChildren();
    body.append(...found.map(entryRow));
    if (found.length) last = found[found.length - 1].seq;
    $("no-entries").hidden = body.rows.length > 0;
    $("more").hidden = found.length < PAGE;
    const kinds = new Set([...$("kinds").options].map((o) => o.value));
    for (const e of found) if (!kinds.has(e.kind)) $("kinds").append(new Option(e.kind, e.kind)), kinds.add(e.kind);
  }

  async function load() {
    F.clearError();
    try {
      await verify();
      await entries(false);
    } catch (err) {
      const note = F.masterNote(err);
      setMain(false, note || "");
      if (!note) F.showError(err.message);
      return false;
    }
    setMain(true);
    return true;
  }

  async function guarded(fn) {
    try {
      await fn();
    } catch (err) {
      F.showError(err.message);
    }
  }

  $("verify-button").addEventListener("click", () => guarded(verify));
  $("filters").addEventListener("submit", (event) => {
    event.preventDefault();
    guarded(() => entries(false));
  });
  $("more").addEventListener("click", () => guarded(() => entries(true)));
  $("export").prepend(F.icon("download"));
  $("export").addEventListener("click", () => guarded(() => F.download("/v1/audit/export", "audit-log.jsonl")));
  $("refresh").addEventListener("click", load);
  F.onKey(() => start());
  F.onLanguage(() => load());

  async function start() {
    await load();
    F.ready();
  }

  start();
})();
