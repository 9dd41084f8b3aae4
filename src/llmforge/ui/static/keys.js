/*
 * Keys and budgets page (master key): create a key with a model scope, per-minute limits and a budget
 * (the key itself is shown once), see every key's spend against its budget as a bar (reserved spend of
 * calls in flight shown apart), revoke a key. Uses the admin API (/admin/keys); with keys off, or with
 * another key, the page says what is needed instead.
 */
(function () {
  "use strict";

  const F = window.Forge;
  const t = F.t;
  const $ = (id) => document.getElementById(id);

  function setMain(visible, note) {
    $("keys-main").hidden = !visible;
    $("keys-off").hidden = visible;
    $("keys-off").textContent = note || "";
  }

  async function load() {
    F.clearError();
    let keys;
    try {
      keys = (await F.api("GET", "/admin/keys")).data || [];
    } catch (err) {
      if (err.status === 403) {
        setMain(false, /authentication is off/i.test(err.message) ? t("keys.authOff") : t("error.masterOnly"));
      } else {
        setMain(false, "");
        F.showError(err.message);
      }
      return false;
    }
    setMain(true);
    render(keys);
    return true;
  }

  function spendCell(k) {
    const used = k.spent_usd + k.reserved_usd;
    const box = F.el("div", { class: "spend", "data-testid": "spend" });
    if (k.budget_usd === null || k.budget_usd === undefined) {
      box.append(F.el("span", { text: t("keys.spentNoBudget", { spent: F.fmt.usd(k.spent_usd) }) }));
      return box;
    }
    const share = k.budget_usd > 0 ? used / k.budget_usd : 1;
    const spent = F.el("div", { class: "bar-fill" + (share >= 1 ? " full" : share >= 0.8 ? " high" : "") });
    spent.style.width = `${Math.min(100, (k.budget_usd > 0 ? k.spent_usd / k.budget_usd : 1) * 100)}%`;
    const reserved = F.el("div", { class: "bar-fill reserved" });
    reserved.style.left = spent.style.width;
    reserved.style.width = `${Math.min(100, k.budget_usd > 0 ? (k.reserved_usd / k.budget_usd) * 100 : 0)}%`;
    const bar = F.el("div", { class: "bar", role: "meter", "aria-valuemin": "0", "aria-valuemax": String(k.budget_usd), "aria-valuenow": String(used) }, spent, reserved);
    box.append(bar, F.el("span", { text: t("keys.spent", { spent: F.fmt.usd(k.spent_usd), budget: F.fmt.usd(k.budget_usd) }) }));
    if (k.reserved_usd > 0) {
      box.append(F.el("span", { class: "muted", text: t("keys.reserved", { reserved: F.fmt.usd(k.reserved_usd) }) }));
    }
    return box;
  }

  function render(keys) {
    const body = $("keys").tBodies[0];
    body.replaceChildren();
    for (const k of keys) {
      const limits = [
        `${t("keys.rpm")}: ${k.rpm ?? t("common.unlimited")}`,
        `${t("keys.tpm")}: ${k.tpm ?? t("common.unlimited")}`,
      ];
      const revoke = F.el(
        "button",
        { type: "button", class: "button small danger", "data-testid": "revoke", disabled: !k.active },
        F.icon("trash"),
        F.el("span", { text: t("keys.revoke") }),
      );
      revoke.addEventListener("click", () => revokeKey(k));
      body.append(
        F.el(
          "tr",
          { "data-testid": "key", "data-id": k.id, "data-name": k.name },
          F.el("td", { text: k.name }),
          F.el("td", { class: "mono nowrap", text: `${k.prefix}…` }),
          F.el(
            "td",
            {},
            F.el("div", { class: "chips" }, ...(k.models ? k.models.map((m) => F.el("span", { class: "badge accent", text: m })) : [F.el("span", { class: "badge", text: t("keys.allModels") })])),
          ),
          F.el("td", { class: "small" }, ...limits.map((l) => F.el("div", { text: l }))),
          F.el("td", {}, spendCell(k)),
          F.el("td", {}, F.el("span", { class: "badge " + (k.active ? "ok" : "error"), text: k.active ? t("keys.active") : t("keys.revoked") })),
          F.el("td", {}, revoke),
        ),
      );
    }
    $("no-keys").hidden = keys.length > 0;
  }

  async function loadModels() {
    let models = [];
    try {
      models = (await F.api("GET", "/v1/models")).data || [];
    } catch (_) {
      /* the list of keys says what is wrong */
    }
    const box = $("key-models");
    const checked = new Set([...box.querySelectorAll("input:checked")].map((i) => i.value));
    box.replaceChildren(
      ...models.map((m) =>
        F.el("label", {}, F.el("input", { type: "checkbox", value: m.id, checked: checked.has(m.id) }), F.el("span", { class: "mono", text: m.id })),
      ),
    );
  }

  function numberOrNull(id) {
    const raw = $(id).value.trim();
    return raw === "" ? null : Number(raw);
  }

  async function create(event) {
    event.preventDefault();
    F.clearError();
    const models = [...$("key-models").querySelectorAll("input:checked")].map((i) => i.value);
    const body = {
      name: $("key-name").value.trim(),
      models: models.length ? models : null,
      rpm: numberOrNull("key-rpm"),
      tpm: numberOrNull("key-tpm"),
      budget_usd: numberOrNull("key-budget"),
    };
    let created;
    try {
      created = await F.api("POST", "/admin/keys", body);
    } catch (err) {
      F.showError(err.message);
      return;
    }
    $("create").reset();
    $("key-secret").textContent = created.key;
    $("key-reveal").hidden = false;
    await load();
  }

  async function revokeKey(k) {
    if (!(await F.confirm(t("keys.revokeConfirm", { name: k.name }), t("keys.revoke")))) return;
    try {
      await F.api("DELETE", `/admin/keys/${encodeURIComponent(k.id)}`);
    } catch (err) {
      F.showError(err.message);
      return;
    }
    await load();
  }

  function copyLabel() {
    $("key-copy").replaceChildren(F.icon("copy"), F.el("span", { class: "label", text: t("common.copy") }));
  }

  $("create").addEventListener("submit", create);
  $("refresh").addEventListener("click", load);
  $("key-copy").addEventListener("click", () => F.copyText($("key-secret").textContent, $("key-copy")));
  F.onKey(() => start());
  F.onLanguage(() => {
    copyLabel();
    load();
  });

  async function start() {
    copyLabel();
    $("key-reveal").hidden = true;
    if (await load()) await loadModels();
    F.ready();
  }

  start();
})();
