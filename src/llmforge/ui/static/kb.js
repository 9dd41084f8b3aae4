/*
 * Knowledge-base page: list and create knowledge bases; upload files and folders (sent in batches, with
 * the upload's progress from XMLHttpRequest and the ingest's from polling GET /v1/kb/{name}); sync;
 * delete; search with every stage explained (dense, BM25, fused and reranked scores per hit); open a
 * chunk inside its document with its heading path. Reads /v1/kb like any client (see routes/kb.py).
 * `#kb=NAME&chunk=ID` in the address opens that chunk (the chat page's source links use it).
 */
(function () {
  "use strict";

  const F = window.Forge;
  const t = F.t;
  const $ = (id) => document.getElementById(id);
  const MAX_BATCH_FILES = 20;
  const MAX_BATCH_BYTES = 3 * 1024 * 1024; // under the server's default 4 MiB body limit
  const POLL_MS = 400;

  const state = { bases: [], current: null, info: null, documents: [], busy: false };

  function kbPath(name, rest) {
    return `/v1/kb/${encodeURIComponent(name)}${rest || ""}`;
  }

  function readHash() {
    const params = new URLSearchParams(location.hash.slice(1));
    return { kb: params.get("kb"), chunk: params.get("chunk") };
  }

  function writeHash(name) {
    history.replaceState(null, "", name ? `#kb=${encodeURIComponent(name)}` : location.pathname);
  }

  // -- the list ---------------------------------------------------------------------------------------

  async function loadBases() {
    try {
      state.bases = (await F.api("GET", "/v1/kb")).data || [];
    } catch (err) {
      F.showError(err.message);
      state.bases = [];
    }
    renderList();
  }

  function renderList() {
    const list = $("kb-list");
    list.replaceChildren();
    $("kb-empty").hidden = state.bases.length > 0;
    for (const b of state.bases) {
      const active = b.name === state.current;
      list.append(
        F.el(
          "li",
          {},
          F.el(
            "button",
            {
              type: "button",
              class: "kb-item" + (active ? " active" : ""),
              "aria-current": active ? "true" : null,
              "data-testid": "kb-item",
              "data-name": b.name,
              onclick: () => select(b.name),
            },
            F.el("span", { class: "kb-item-name", text: b.name }),
            F.el("span", { class: "kb-item-meta", text: t("kb.counts", { documents: b.documents, chunks: b.chunks }) }),
          ),
        ),
      );
    }
  }

  async function create(event) {
    event.preventDefault();
    const name = $("kb-name").value.trim();
    if (!name) return;
    F.clearError();
    try {
      await F.api("POST", "/v1/kb", { name });
    } catch (err) {
      F.showError(err.message);
      return;
    }
    $("kb-name").value = "";
    await loadBases();
    await select(name);
  }

  // -- one knowledge base -----------------------------------------------------------------------------

  async function select(name) {
    F.clearError();
    state.current = name;
    writeHash(name);
    renderList();
    $("kb-pick").hidden = true;
    $("kb-view").hidden = false;
    $("kb-search-results").replaceChildren();
    $("kb-progress").hidden = true;
    await Promise.all([loadInfo(), loadDocuments()]);
  }

  async function loadInfo() {
    const name = state.current;
    if (!name) return;
    let info;
    try {
      info = await F.api("GET", kbPath(name));
    } catch (err) {
      F.showError(err.message);
      return;
    }
    if (name !== state.current) return;
    state.info = info;
    $("kb-title").textContent = info.name;
    $("kb-meta").textContent =
      t("kb.counts", { documents: info.documents, chunks: info.chunks }) +
      " · " +
      t("kb.details", { embedding: info.embedding, dimensions: info.dimensions, store: info.store }) +
      (info.reranker ? t("kb.reranker") : "");
    const entry = state.bases.find((b) => b.name === name);
    if (entry) {
      entry.documents = info.documents;
      entry.chunks = info.chunks;
      renderList();
    }
  }

  async function loadDocuments() {
    const name = state.current;
    if (!name) return;
    let documents;
    try {
      documents = (await F.api("GET", kbPath(name, "/documents"))).data || [];
    } catch (err) {
      F.showError(err.message);
      return;
    }
    if (name !== state.current) return;
    state.documents = documents;
    const body = $("kb-documents").tBodies[0];
    body.replaceChildren();
    for (const d of documents) {
      body.append(
        F.el(
          "tr",
          { "data-testid": "document" },
          F.el("td", { text: d.title }),
          F.el("td", { class: "mono", text: F.fmt.fileName(d.source) }),
          F.el("td", {}, F.el("span", { class: "badge", text: d.file_type })),
          F.el("td", { class: "num", text: F.fmt.num(d.chunks) }),
          F.el("td", { class: "nowrap", text: F.fmt.ago(d.updated_at) }),
        ),
      );
    }
    $("kb-no-documents").hidden = documents.length > 0;
  }

  function setTab(which) {
    const search = which === "search";
    $("tab-search").setAttribute("aria-selected", String(search));
    $("tab-documents").setAttribute("aria-selected", String(!search));
    $("kb-search-panel").hidden = !search;
    $("kb-documents-panel").hidden = search;
  }

  // -- uploads ----------------------------------------------------------------------------------------

  function batches(files) {
    const out = [];
    let current = [];
    let bytes = 0;
    for (const file of files) {
      if (current.length && (current.length >= MAX_BATCH_FILES || bytes + file.size > MAX_BATCH_BYTES)) {
        out.push(current);
        current = [];
        bytes = 0;
      }
      current.push(file);
      bytes += file.size;
    }
    if (current.length) out.push(current);
    return out;
  }

  function progress(text, fraction) {
    $("kb-progress").hidden = false;
    $("kb-progress-text").textContent = text;
    $("kb-progress-bar").style.width = `${Math.round(Math.max(0, Math.min(1, fraction)) * 100)}%`;
  }

  /* POST one batch as multipart; resolves with the JSON answer. Reports upload progress, then polls
     the knowledge base for the ingest's progress until the answer comes. */
  function sendBatch(name, files, done, total) {
    return new Promise((resolve, reject) => {
      const form = new FormData();
      for (const f of files) form.append("files", f, f.name);
      const xhr = new XMLHttpRequest();
      let poll = null;
      const stopPolling = () => poll && clearInterval(poll);
      xhr.open("POST", kbPath(name, "/documents"));
      const headers = F.authHeaders({ Accept: "application/json" });
      for (const [k, v] of Object.entries(headers)) xhr.setRequestHeader(k, v);
      xhr.upload.onprogress = (event) => {
        if (!event.lengthComputable) return;
        const share = event.loaded / event.total;
        progress(t("kb.uploading", { files: files.length, percent: Math.round(share * 100) }), (done + share * files.length * 0.5) / total);
      };
      xhr.upload.onload = () => {
        progress(t("kb.ingestWaiting"), (done + files.length * 0.5) / total);
        poll = setInterval(async () => {
          try {
            const info = await F.api("GET", kbPath(name));
            const ing = info.ingesting;
            if (ing && ing.files_total) {
              const share = ing.files_done / ing.files_total;
              progress(
                t("kb.ingesting", { done: ing.files_done, total: ing.files_total, chunks: ing.chunks_done }),
                (done + files.length * (0.5 + share * 0.5)) / total,
              );
            }
          } catch (_) {
            /* progress is best effort; the upload's own answer decides */
          }
        }, POLL_MS);
      };
      xhr.onload = async () => {
        stopPolling();
        let body = null;
        try {
          body = JSON.parse(xhr.responseText);
        } catch (_) {
          /* not JSON */
        }
        if (xhr.status >= 200 && xhr.status < 300 && body) resolve(body);
        else {
          const message = body && body.error ? body.error.message : t("error.status", { status: xhr.status });
          reject(new Error(message + (xhr.status === 401 ? t("error.setKey") : "")));
        }
      };
      xhr.onerror = () => {
        stopPolling();
        reject(F.networkError(new Error("upload failed")));
      };
      xhr.send(form);
    });
  }

  async function upload(fileList) {
    const name = state.current;
    const files = [...fileList].filter((f) => f.size >= 0 && !f.name.startsWith("."));
    if (!name || !files.length || state.busy) return;
    F.clearError();
    state.busy = true;
    setBusy(true);
    const results = [];
    let done = 0;
    $("kb-results").replaceChildren();
    try {
      for (const batch of batches(files)) {
        const body = await sendBatch(name, batch, done, files.length);
        results.push(...body.files);
        done += batch.length;
      }
    } catch (err) {
      F.showError(err.message);
    } finally {
      state.busy = false;
      setBusy(false);
    }
    const count = (status) => results.filter((r) => r.status === status).length;
    progress(
      t("kb.uploadDone", {
        added: count("added"),
        updated: count("updated"),
        unchanged: count("unchanged"),
        failed: count("failed") + count("skipped"),
      }),
      done / files.length,
    );
    renderResults(results);
    await Promise.all([loadInfo(), loadDocuments()]);
  }

  function renderResults(results) {
    const list = $("kb-results");
    list.replaceChildren();
    for (const r of results) {
      const cls = r.status === "failed" || r.status === "skipped" ? "error" : r.status === "unchanged" ? "" : "ok";
      list.append(
        F.el(
          "li",
          { "data-testid": "file-result" },
          F.el("span", { class: `badge ${cls}`, text: t(`kb.status.${r.status}`) }),
          F.el("span", { class: "mono", text: r.filename }),
          r.error ? F.el("span", { class: "muted", text: r.error }) : null,
        ),
      );
    }
  }

  function setBusy(on) {
    for (const id of ["kb-upload-button", "kb-folder-button", "kb-sync", "kb-delete"]) $(id).disabled = on;
  }

  /* Files of a drop, folders walked recursively. */
  async function droppedFiles(dataTransfer) {
    const entries = [...(dataTransfer.items || [])]
      .map((item) => (item.webkitGetAsEntry ? item.webkitGetAsEntry() : null))
      .filter(Boolean);
    if (!entries.length) return [...dataTransfer.files];
    const files = [];
    const walk = async (entry) => {
      if (entry.isFile) {
        files.push(await new Promise((resolve, reject) => entry.file(resolve, reject)));
      } else if (entry.isDirectory) {
        const reader = entry.createReader();
        let batch;
        do {
          batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
          for (const child of batch) await walk(child);
        } while (batch.length);
      }
    };
    for (const entry of entries) await walk(entry);
    return files;
  }

  async function sync() {
    const name = state.current;
    if (!name || state.busy) return;
    F.clearError();
    state.busy = true;
    setBusy(true);
    progress(t("kb.syncing"), 0.5);
    $("kb-results").replaceChildren();
    try {
      const r = await F.api("POST", kbPath(name, "/sync"));
      progress(
        t("kb.syncDone", {
          added: r.added.length,
          updated: r.updated.length,
          unchanged: r.unchanged.length,
          removed: r.removed.length,
          failed: r.failed.length,
        }),
        1,
      );
    } catch (err) {
      $("kb-progress").hidden = true;
      F.showError(err.message);
    } finally {
      state.busy = false;
      setBusy(false);
    }
    await Promise.all([loadInfo(), loadDocuments()]);
  }

  async function remove() {
    const name = state.current;
    if (!name) return;
    if (!(await F.confirm(t("kb.deleteConfirm", { name }), t("kb.delete")))) return;
    try {
      await F.api("DELETE", kbPath(name));
    } catch (err) {
      F.showError(err.message);
      return;
    }
    state.current = null;
    writeHash(null);
    $("kb-view").hidden = true;
    $("kb-pick").hidden = false;
    await loadBases();
  }

  // -- search -----------------------------------------------------------------------------------------

  function highlight(text, query) {
    const words = [...new Set(query.toLowerCase().match(/[\p{L}\p{N}]{3,}|[\u3400-\u9fff]/gu) || [])];
    const node = F.el("p", { class: "hit-text" });
    if (!words.length) {
      node.textContent = text;
      return node;
    }
    const escaped = words.map((w) => w.replace(/[.*+?^${}()|[\]\\]/g, "\\$&"));
    const pattern = new RegExp(`(${escaped.join("|")})`, "giu");
    for (const part of text.split(pattern)) {
      if (!part) continue;
      node.append(words.includes(part.toLowerCase()) ? F.el("mark", { text: part }) : document.createTextNode(part));
    }
    return node;
  }

  function scoreBar(label, value, fraction, help) {
    const fill = F.el("div", { class: "bar-fill" });
    fill.style.width = `${Math.round(Math.max(0, Math.min(1, fraction || 0)) * 100)}%`;
    return F.el(
      "div",
      { class: "score", title: help, "data-score": label },
      F.el(
        "div",
        { class: "score-name" },
        F.el("span", { text: t(`kb.stage.${label}`) }),
        F.el("span", { class: "score-value", text: value === null || value === undefined ? "–" : value.toFixed(3) }),
      ),
      F.el("div", { class: "bar" }, fill),
    );
  }

  function renderStages(stages) {
    const box = F.el("div", { class: "stages", "data-testid": "stages" });
    for (const s of stages) {
      box.append(
        F.el(
          "div",
          { class: "stage", "data-stage": s.name },
          F.el("div", { class: "stage-name", text: t(`kb.stage.${s.name}`) }),
          F.el("div", { text: t("kb.candidates", { n: s.candidates, ms: s.ms }) + (s.detail ? ` · ${s.detail}` : "") }),
          F.el("div", { class: "stage-help", text: t(`kb.stageHelp.${s.name}`) }),
        ),
      );
    }
    return box;
  }

  async function search(event) {
    event.preventDefault();
    const name = state.current;
    const query = $("kb-query").value.trim();
    if (!name || !query) return;
    F.clearError();
    const out = $("kb-search-results");
    out.replaceChildren(F.el("p", { class: "muted", text: t("common.loading") }));
    const body = { query, k: Number($("kb-k").value), detailed: true };
    if ($("kb-fusion").value) body.fusion = $("kb-fusion").value;
    let result;
    try {
      result = await F.api("POST", kbPath(name, "/search"), body);
    } catch (err) {
      out.replaceChildren();
      F.showError(err.message);
      return;
    }
    const hits = result.data || [];
    const maxOf = (key) => Math.max(1e-9, ...hits.map((h) => h[key] || 0));
    const maxBm25 = maxOf("bm25_score");
    const maxFused = maxOf("fused_score");
    const sigmoid = (x) => 1 / (1 + Math.exp(-x));
    const list = F.el("ol", { class: "hits" });
    hits.forEach((h, i) => {
      const path = [h.title, ...(h.heading_path || []).filter((x) => x !== h.title)].join(" › ");
      const scores = F.el(
        "div",
        { class: "scores" },
        scoreBar("dense", h.dense_score, h.dense_score, t("kb.stageHelp.dense") + (h.dense_score === null ? ` (${t("kb.notRanked")})` : "")),
        scoreBar("bm25", h.bm25_score, (h.bm25_score || 0) / maxBm25, t("kb.stageHelp.bm25") + (h.bm25_score === null ? ` (${t("kb.notRanked")})` : "")),
        scoreBar("fusion", h.fused_score, (h.fused_score || 0) / maxFused, t("kb.stageHelp.fusion")),
        result.reranked ? scoreBar("rerank", h.rerank_score, sigmoid(h.rerank_score || 0), t("kb.stageHelp.rerank")) : null,
      );
      list.append(
        F.el(
          "li",
          { class: "hit", "data-testid": "hit", "data-chunk": h.chunk_id },
          F.el(
            "div",
            { class: "hit-head" },
            F.el("span", { class: "hit-rank", text: `#${i + 1}` }),
            F.el("span", { class: "hit-path", text: path }),
            F.el("span", { class: "badge mono", text: F.fmt.fileName(h.source) + (h.page ? ` · p.${h.page}` : "") }),
          ),
          highlight(h.text, query),
          scores,
          F.el(
            "button",
            { type: "button", class: "button small", "data-testid": "open-chunk", onclick: () => openChunk(h.chunk_id) },
            F.icon("external"),
            F.el("span", { text: t("kb.open") }),
          ),
        ),
      );
    });
    out.replaceChildren(
      F.el("h3", { class: "small muted", text: t("kb.stages") }),
      renderStages(result.stages || []),
      hits.length ? list : F.el("p", { class: "empty-note", text: t("kb.noHits") }),
    );
  }

  // -- a chunk in its document ------------------------------------------------------------------------

  async function openChunk(chunkId) {
    const name = state.current;
    if (!name) return;
    let chunk;
    try {
      chunk = await F.api("GET", kbPath(name, `/chunks/${encodeURIComponent(chunkId)}`));
    } catch (err) {
      F.showError(err.message);
      return;
    }
    const old = $("chunk-dialog");
    if (old) old.remove();
    const box = F.dialog("chunk-dialog", chunk.title);
    box.classList.add("wide");
    box.dataset.testid = "chunk-dialog";
    const doc = state.documents.find((d) => d.source === chunk.source);
    const total = doc ? doc.chunks : null;
    const crumbs = F.el("ol", { class: "doc-breadcrumb", "data-testid": "heading-path" });
    for (const part of [chunk.title, ...chunk.heading_path.filter((x) => x !== chunk.title)]) {
      crumbs.append(F.el("li", { text: part }));
    }
    const facts = F.el(
      "dl",
      { class: "kv" },
      F.el("dt", { text: t("kb.source") }),
      F.el("dd", { class: "mono", text: chunk.source }),
      chunk.page ? [F.el("dt", { text: "PDF" }), F.el("dd", { text: t("chat.page", { page: chunk.page }) })] : null,
      F.el("dt", { text: "#" }),
      F.el("dd", { text: total ? t("kb.chunkOf", { index: chunk.chunk_index + 1, total }) : String(chunk.chunk_index + 1) }),
    );
    const chunks = F.el("div", { class: "doc-chunks", "data-testid": "document-chunks" }, F.el("p", { class: "muted", text: t("kb.sourceLoading") }));
    box.append(F.el("div", { class: "dialog-body" }, crumbs, facts, chunks));
    box.showModal();
    // the whole document: its chunks, by a search restricted to this one file
    let all = [chunk];
    if (total && total > 1) {
      try {
        const r = await F.api("POST", kbPath(name, "/search"), {
          query: chunk.title || chunk.text.slice(0, 200),
          k: Math.min(total, 1000),
          filters: { path_prefix: chunk.source },
          fusion: "dense",
        });
        const found = (r.data || []).map((h) => ({ ...h, id: h.chunk_id }));
        if (!found.some((h) => h.id === chunk.id)) found.push(chunk);
        all = found;
      } catch (_) {
        /* the chunk alone, then */
      }
    }
    all.sort((a, b) => a.chunk_index - b.chunk_index);
    chunks.replaceChildren();
    let lastHeading = null;
    for (const c of all) {
      const heading = (c.heading_path || []).join(" › ");
      if (heading && heading !== lastHeading) chunks.append(F.el("div", { class: "doc-heading", text: heading }));
      lastHeading = heading;
      chunks.append(F.el("div", { class: "doc-chunk" + (c.id === chunk.id ? " target" : ""), "data-chunk": c.id, text: c.text }));
    }
    const target = chunks.querySelector(".doc-chunk.target");
    if (target) target.scrollIntoView({ block: "center" });
  }

  // -- wiring -----------------------------------------------------------------------------------------

  function buttonLabels() {
    const set = (id, iconName, key) => $(id).replaceChildren(F.icon(iconName), F.el("span", { text: t(key) }));
    set("kb-upload-button", "upload", "kb.upload");
    set("kb-folder-button", "folder", "kb.uploadFolder");
    set("kb-sync", "sync", "kb.sync");
    set("kb-delete", "trash", "kb.delete");
  }

  $("kb-create").addEventListener("submit", create);
  $("kb-search").addEventListener("submit", search);
  $("tab-search").addEventListener("click", () => setTab("search"));
  $("tab-documents").addEventListener("click", () => setTab("documents"));
  $("kb-upload-button").addEventListener("click", () => $("kb-files").click());
  $("kb-folder-button").addEventListener("click", () => $("kb-folder").click());
  for (const id of ["kb-files", "kb-folder"]) {
    $(id).addEventListener("change", async (event) => {
      const files = [...event.target.files];
      event.target.value = "";
      await upload(files);
    });
  }
  const drop = $("kb-drop");
  drop.addEventListener("dragover", (event) => {
    event.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", async (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    await upload(await droppedFiles(event.dataTransfer));
  });
  $("kb-sync").addEventListener("click", sync);
  $("kb-delete").addEventListener("click", remove);
  F.onKey(() => start());
  F.onLanguage(() => {
    buttonLabels();
    renderList();
    if (state.current) loadInfo();
  });

  async function start() {
    buttonLabels();
    await loadBases();
    const wanted = readHash();
    if (wanted.kb && state.bases.some((b) => b.name === wanted.kb)) {
      await select(wanted.kb);
      if (wanted.chunk) await openChunk(wanted.chunk);
    }
    F.ready();
  }

  start();
})();
