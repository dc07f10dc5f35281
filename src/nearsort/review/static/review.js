/* nearsort review: the page. Plain JS, no build step, nothing from another site.
 * Every name from the library is put into the page as text (textContent), never as markup.
 * Everything is paged from the server: a group page (20), a chain page (200), a quality page (100). */
"use strict";

const TOKEN = document.querySelector('meta[name="nearsort-token"]').content;
const GROUP_PAGE = 20, CHAIN_PAGE = 200, QUALITY_PAGE = 100;
const FIELDS = [  // [key the server names in "differs", label, how to show a member's value]
  ["resolution", "size", m => `${m.width ?? "?"}×${m.height ?? "?"}`],
  ["bytes", "bytes", m => bytes(m.bytes)],
  ["format", "format", m => m.format || "?"],
  ["capture_time", "taken", m => (m.capture_time || "").replace("T", " ").slice(0, 19) || "—"],
  ["mtime", "file date", m => (m.mtime || "").replace("T", " ").slice(0, 19) || "—"],
  ["camera", "camera", m => m.camera || "—"],
  ["path", "path", m => m.path],
];
const DIFF_ALIASES = {width: "resolution", height: "resolution", folder: "path", name: "path"};
const RELATION = {exact: "exact copy", perceptual: "re-encoded / resized", near: "crop / re-framed", copy: "copy",
                  pair: "same shot (RAW + JPEG): kept", shot: "similar shot", mirror: "mirror image"};

// ---------------------------------------------------------------- small helpers
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v === true ? "" : String(v));
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return e;
}
const $ = (sel, root = document) => root.querySelector(sel);
function bytes(n) {
  if (n === null || n === undefined) return "?";
  const u = ["B", "kB", "MB", "GB", "TB"]; let i = 0; n = Number(n);
  while (Math.abs(n) >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  return i ? `${n.toFixed(1)} ${u[i]}` : `${n} B`;
}
function basename(p) { const i = Math.max(p.lastIndexOf("/"), p.lastIndexOf("\\")); return i < 0 ? p : p.slice(i + 1); }
function dirname(p) { const i = Math.max(p.lastIndexOf("/"), p.lastIndexOf("\\")); return i < 0 ? "" : p.slice(0, i + 1); }

let toastTimer = null;
function toast(msg, bad) {
  const t = $("#toast");
  t.textContent = msg; t.className = bad ? "show bad" : "show";
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { t.className = ""; }, bad ? 8000 : 2500);
}

async function api(path, body) {
  const opt = body === undefined ? {credentials: "same-origin"} : {
    method: "POST", credentials: "same-origin",
    headers: {"Content-Type": "application/json", "X-Nearsort-Token": TOKEN}, body: JSON.stringify(body)};
  let r;
  try { r = await fetch(path, opt); } catch (e) { throw new Error("the review server does not answer (was it stopped?)"); }
  const text = await r.text();
  let data = null;
  try { data = JSON.parse(text); } catch (e) { /* a plain-text refusal */ }
  if (!r.ok) throw new Error((data && data.error) || text.trim() || `HTTP ${r.status}`);
  return data;
}
function fail(e) { toast(e.message || String(e), true); }

// Actions run one after another, in the order of the keys pressed (none is dropped while one is busy).
let queue = Promise.resolve();
function serial(fn) { queue = queue.then(fn).catch(fail); return queue; }

function confirmBox(message) {
  return new Promise(resolve => {
    const m = $("#confirm");
    $(".msg", m).textContent = message;
    m.hidden = false;
    const done = ok => { m.hidden = true; m.onkeydown = null; resolve(ok); };
    $(".yes", m).onclick = () => done(true);
    $(".no", m).onclick = () => done(false);
    m.onkeydown = e => { if (e.key === "Escape") { e.stopPropagation(); done(false); } };
    $(".yes", m).focus();
  });
}

function thumbImg(url, alt, cls) {
  const img = el("img", {class: cls || "", alt: alt || "", loading: "lazy", decoding: "async"});
  if (url) img.src = url;
  return img;
}

// ---------------------------------------------------------------- summary counts
const summary = {data: null};
async function loadSummary() {
  try {
    const s = await api("/api/summary");
    summary.data = s;
    $("#libname").textContent = `— ${s.name || s.root} · ${s.photos} photos`;
    $("#n-copies").textContent = s.copies;
    $("#n-similar").textContent = s.similar;
    $("#n-apply").textContent = s.pending.files ? `${s.pending.files} · ${bytes(s.pending.bytes)}` : "";
    if (s.move_to && !$("#apply-dest").value) $("#apply-dest").value = s.move_to;
    if (current === "apply") showApplySummary();
  } catch (e) { fail(e); }
}

// ---------------------------------------------------------------- duplicate groups / similar shots
class Groups {
  constructor(kind) {
    this.kind = kind;
    this.view = $(`#view-${kind}`);
    this.host = $(".group-host", this.view);
    this.pos = $(".pos", this.view);
    this.showDecided = $(".show-decided", this.view);
    this.showDecided.addEventListener("change", () => { this.showDecided.blur(); serial(() => this.reload()); });
    this.items = []; this.total = 0; this.cur = 0; this.keeper = {}; this.loaded = false; this.exhausted = false;
  }
  pendingMode() { return !this.showDecided.checked; }
  isPending(g) { return !g.decision; }
  nextOffset() {  // the groups of this list still pending are a prefix of the server's pending list
    return this.pendingMode() ? this.items.filter(g => this.isPending(g)).length : this.items.length;
  }
  async reload() {
    this.items = []; this.cur = 0; this.keeper = {}; this.exhausted = false;
    await this.more();
    this.loaded = true;
    this.render();
  }
  async more() {
    if (this.exhausted) return false;
    const p = await api(`/api/groups?kind=${this.kind}&offset=${this.nextOffset()}&limit=${GROUP_PAGE}&pending=${this.pendingMode() ? 1 : 0}`);
    this.total = p.total;
    $("#stale").hidden = !p.stale;   // the catalog changed since the groups were found
    const have = new Set(this.items.map(g => g.id));
    const fresh = p.groups.filter(g => !have.has(g.id));
    this.items.push(...fresh);
    if (!fresh.length) this.exhausted = true;
    return fresh.length > 0;
  }
  group() { return this.items[this.cur]; }
  async go(delta) {
    let i = this.cur + delta;
    if (i >= this.items.length - 2 && !this.exhausted) { try { await this.more(); } catch (e) { fail(e); } }
    i = Math.max(0, Math.min(i, this.items.length - 1));
    this.cur = i; this.render();
  }
  async advance() {  // to the next group without a decision
    for (let i = this.cur + 1; ; i++) {
      if (i >= this.items.length && !(await this.more())) break;
      if (i < this.items.length && this.isPending(this.items[i])) { this.cur = i; this.render(); return; }
    }
    this.cur = Math.min(this.cur + 1, Math.max(0, this.items.length - 1));
    this.render();
  }
  chosenKeeper(g) {
    if (this.keeper[g.id] !== undefined) return this.keeper[g.id];
    return g.keeper_source_id ?? g.suggested_keeper_source_id;
  }
  member(g, n) { return g.members[n - 1]; }
  choose(n) {
    const g = this.group(); if (!g) return;
    const m = this.member(g, n); if (!m) return;
    this.keeper[g.id] = m.source_id; this.render();
  }
  async decide(action, extra) {
    const g = this.group(); if (!g) return;
    if (document.activeElement && document.activeElement.tagName === "BUTTON") document.activeElement.blur();
    try {
      const body = {group_id: g.id, action, ...extra};
      if (action === "accept") body.keeper = this.chosenKeeper(g);
      const r = await api("/api/decide", body);
      if (r.group) Object.assign(g, r.group); else g.decision = {action};   // the group as the server has it now
      delete this.keeper[g.id];
      if (extra && extra.member !== undefined && !g.decision) {
        toast("split off: that file is not a copy of the others");   // the rest of the group is still to decide
        this.render();
      } else {
        toast(action === "accept" ? "accepted" : action === "distinct" ? "marked: not duplicates" : "skipped");
        await this.advance();
      }
      loadSummary();
    } catch (e) { fail(e); }
  }
  async refresh(g) { Object.assign(g, await api(`/api/group?id=${g.id}`)); }
  async undo() {
    try {
      const r = await api("/api/undo-decision", {});
      if (!r.decision) { toast("nothing to undo"); return; }
      const i = r.group ? this.items.findIndex(g => g.id === r.group.id) : -1;
      if (i >= 0) {
        Object.assign(this.items[i], r.group);
        delete this.keeper[r.group.id];
        this.cur = i;
      } else { await this.reload(); }   // a bulk accept undone, or a group not on this list
      toast(r.decision.count > 1 ? `undone: ${r.decision.count} decisions (one bulk accept)` : "undone: the last decision");
      this.render();
      loadSummary();
    } catch (e) { fail(e); }
  }
  async acceptAllExact() {
    const ok = await confirmBox("Accept every remaining pending group of exact copies (byte-identical files), " +
      "keeping each group's suggested keeper? Similar shots and near copies are not touched; nothing moves until Apply.");
    if (!ok) return;
    try {
      const r = await api("/api/accept-all", {kind: "copies", relation: "exact"});
      toast(`accepted ${r.accepted} groups of exact copies`);
      await this.reload(); loadSummary();
    } catch (e) { fail(e); }
  }

  render() {
    const host = this.host;
    host.replaceChildren();
    if (!this.items.length) {
      this.pos.textContent = "";
      host.append(el("p", {class: "empty"}, this.pendingMode()
        ? (this.kind === "copies" ? "No duplicate groups left to decide." : "No similar shots left to decide.")
        : "No groups."));
      return;
    }
    const g = this.group();
    if (this.shown !== g.id && !this.view.hidden) { window.scrollTo(0, 0); this.shown = g.id; }  // a new group: from its top
    const label = this.pendingMode() ? "pending" : "in all";
    this.pos.textContent = `group ${this.cur + 1} of ${this.total} ${label}`;
    host.append(this.card(g));
    const upcoming = this.items.slice(this.cur + 1, this.cur + 4);
    if (upcoming.length) {
      host.append(el("div", {class: "upcoming"}, el("span", {class: "label"}, "next:"),
        upcoming.map((u, k) => el("button", {class: "mini" + (u.decision ? " decided" : ""), title: `group ${u.id}`,
          onclick: () => { this.cur += k + 1; this.render(); }},
          u.members.slice(0, 4).map(m => thumbImg(m.thumb_url, "", "tiny")),
          el("span", {}, `${u.members.length} · ${bytes(u.reclaimable_bytes)}`)))));
    }
  }

  card(g) {
    const keeper = this.chosenKeeper(g);
    const differs = new Set((g.differs || []).map(f => DIFF_ALIASES[f] || f));
    const d = g.decision;
    const status = !d ? el("span", {class: "badge pending"}, "pending")
      : d.action === "accept" ? el("span", {class: "badge accepted"}, "accepted")
      : d.action === "distinct" ? el("span", {class: "badge distinct"}, "not duplicates")
      : el("span", {class: "badge skipped"}, "skipped");
    const rel = g.relation || (this.kind === "similar" ? "similar shots" : "copies");
    const head = el("div", {class: "ghead"},
      el("h2", {}, `Group ${g.id}`), el("span", {class: "kind"}, rel),
      el("span", {}, `${g.members.length} files`),
      el("span", {class: "reclaim"}, `${bytes(g.reclaimable_bytes)} reclaimable`), status);
    const row = el("div", {class: "members"});
    g.members.forEach((m, i) => {
      const n = i + 1;
      const isKeeper = m.source_id === keeper;
      const suggested = m.source_id === g.suggested_keeper_source_id;
      const pair = m.relation === "pair";
      const gone = m.status && m.status !== "ok";   // quarantined, missing since
      const table = el("table", {class: "fields"}, FIELDS.map(([key, lab, fn]) => {
        const v = fn(m);
        return el("tr", {class: differs.has(key) ? "differs" : ""}, el("th", {}, lab),
          el("td", {title: key === "path" ? m.path : null},
            key === "path" ? [el("span", {class: "dir"}, dirname(m.path)), el("b", {}, basename(m.path))] : v));
      }));
      const tags = [];
      if (isKeeper) tags.push(el("span", {class: "keep"}, "★ keep"));
      if (suggested) tags.push(el("span", {class: "sugg"}, this.kind === "similar" ? "sharpest · suggested" : "suggested"));
      if (m.relation && m.relation !== "keeper") tags.push(el("span", {class: "rel" + (pair ? " pair" : "")}, RELATION[m.relation] || m.relation));
      if (gone) tags.push(el("span", {class: "rel split"}, m.status));
      row.append(el("figure", {class: "member" + (isKeeper ? " keeper" : "") + (gone ? " split" : ""),
                               "data-n": n, "data-source": m.source_id, title: "click: keep this one (" + n + ")",
                               onclick: () => serial(() => this.choose(n))},
        el("div", {class: "imgbox"}, el("span", {class: "num"}, String(n)), thumbImg(m.thumb_url, basename(m.path))),
        el("figcaption", {}, el("div", {class: "tags"}, tags), table)));
    });
    const actions = el("div", {class: "actions"},
      el("button", {class: "primary", onclick: () => serial(() => this.decide("accept"))}, "Accept, keep ★ (a)"),
      el("button", {onclick: () => serial(() => this.decide("distinct"))}, "Not duplicates (n)"),
      el("button", {onclick: () => serial(() => this.decide("skip"))}, "Skip (s)"),
      el("button", {onclick: () => serial(() => this.undo())}, "Undo (u)"),
      el("span", {class: "hint"}, "1–9 choose the keeper · ⇧1–9 split one off"));
    return el("article", {class: "group", "data-id": g.id, "data-decision": d ? d.action : "pending"}, head, row, actions);
  }
}

// ---------------------------------------------------------------- grids (chain, search, quality)
function tile(item, sub) {
  const path = item.path || (item.sources && item.sources[0]) || (item.paths && item.paths[0]) || item.thumb || "";
  return el("figure", {class: "tile" + (item.big_jump ? " jump" : ""), title: path, "data-thumb": item.thumb_id},
    thumbImg(item.thumb_url, basename(path)),
    el("figcaption", {}, el("span", {class: "sub"}, sub || ""),
      el("button", {class: "like", title: "more like this", onclick: ev => { ev.stopPropagation(); moreLike(item); }}, "≈ more like this")));
}

const chain = {offset: 0, total: 0, loaded: false};
async function loadChain(offset) {
  try {
    const r = await api(`/api/chain?offset=${Math.max(0, offset)}&limit=${CHAIN_PAGE}`);
    chain.offset = r.offset; chain.total = r.total; chain.loaded = true;
    const grid = $("#chain-grid");
    grid.replaceChildren();
    const v = $("#view-chain");
    if (!r.ordering) { $(".pos", v).textContent = r.message || "no chain yet"; return; }
    const steps = r.items.map(i => i.jump).filter(j => j !== null && j !== undefined).sort((a, b) => b - a);
    const cut = steps.length > 10 ? steps[Math.floor(steps.length * 0.03)] : Infinity;
    for (const it of r.items) {
      it.big_jump = it.jump !== null && it.jump >= cut;
      grid.append(tile(it, `#${it.rank + 1}`));
    }
    const page = Math.floor(chain.offset / CHAIN_PAGE) + 1, pages = Math.max(1, Math.ceil(chain.total / CHAIN_PAGE));
    $(".pos", v).textContent = `page ${page} of ${pages} · ${chain.total} thumbnails · ${r.ordering}`;
  } catch (e) { fail(e); }
}

async function runSearch(q) {
  if (!q.trim()) return;
  $("#search-what").textContent = `searching “${q}” …`;
  try { showHits(await api(`/api/search?q=${encodeURIComponent(q)}&k=60`), `results for “${q}”`); } catch (e) { fail(e); $("#search-what").textContent = ""; }
}
async function moreLike(item) {
  show("search");
  $("#search-what").textContent = "looking for similar photos …";
  try { showHits(await api(`/api/similar?thumb_id=${item.thumb_id}&k=60`), "photos like", item); } catch (e) { fail(e); }
}
function showHits(r, what, like) {
  const grid = $("#search-grid");
  grid.replaceChildren();
  const notes = [];
  if (r.fallback) notes.push(`${r.model} has no text tower: ImageNet label search` +
    (r.classes && r.classes.length ? ` (${r.classes.slice(0, 4).map(c => c.name).join(", ")})` : ""));
  if (r.message) notes.push(r.message);
  if (r.random_weights) notes.push("the model has random weights (a speed test): the results mean nothing");
  $("#search-note").textContent = notes.join(" · ");
  if (like) grid.append(el("figure", {class: "tile query"}, thumbImg(like.thumb_url, ""), el("figcaption", {}, "this photo")));
  for (const h of r.results) grid.append(tile(h, h.score !== undefined ? h.score.toFixed(3) : ""));
  $("#search-what").textContent = `${r.results.length} ${what} · ${r.model}`;
}

const quality = {kind: "dark", offset: 0, total: 0, loaded: false};
async function loadQuality(kind, offset) {
  try {
    const r = await api(`/api/quality?kind=${kind}&offset=${Math.max(0, offset)}&limit=${QUALITY_PAGE}`);
    Object.assign(quality, {kind, offset: r.offset, total: r.total, loaded: true});
    for (const b of document.querySelectorAll("#quality-kinds [data-q]")) {
      b.classList.toggle("on", b.dataset.q === kind);
      $(".count", b).textContent = r.counts[b.dataset.q] ?? "";
    }
    const grid = $("#quality-grid"), table = $("#quality-errors");
    grid.replaceChildren(); $("tbody", table).replaceChildren();
    grid.hidden = kind === "errors"; table.hidden = kind !== "errors";
    for (const it of r.items) {
      if (kind === "errors") $("tbody", table).append(el("tr", {}, el("td", {}, it.path), el("td", {}, it.error)));
      else grid.append(tile(it, kind === "blurry" ? `blur ${it.blur}` : `brightness ${it.brightness}`));
    }
    const pages = Math.max(1, Math.ceil(r.total / QUALITY_PAGE));
    $("#quality-kinds .pos").textContent = `${r.total ? Math.floor(r.offset / QUALITY_PAGE) + 1 : 0} / ${pages}` +
      (r.threshold !== null && r.threshold !== undefined ? ` · threshold ${r.threshold}` : "");
  } catch (e) { fail(e); }
}

// ---------------------------------------------------------------- apply
function showApplySummary() {
  const s = summary.data; if (!s) return;
  const p = s.pending;
  $("#apply-summary").textContent = p.files
    ? `${p.files} files (${bytes(p.bytes)}) of ${p.groups} accepted groups will be moved to the quarantine; their keepers stay.`
    : "No accepted group yet: accept groups in Duplicates (or Similar shots) first.";
}
function showQuarantine(q, dry) {
  const box = $("#apply-result");
  box.replaceChildren();
  const moved = dry ? (q.moves || []).length : q.moved;
  box.append(el("p", {class: dry ? "" : "done"}, dry ? `Would move ${moved} files (${bytes(q.bytes)}) to ${q.dest}.`
    : `Moved ${moved} files (${bytes(q.bytes)}) to ${q.dest}` + (q.op_id ? ` (operation #${q.op_id}; Undo, or nearsort undo, puts them back).` : ".")));
  for (const g of q.refused_groups || []) box.append(el("p", {class: "warn"}, `refused group ${g.group} (keeper ${g.keeper}): ${g.why}`));
  const sk = q.skipped || [];
  if (sk.length) box.append(el("ul", {class: "skipped"}, sk.slice(0, 50).map(s => el("li", {}, `skipped ${s.path || s.src}: ${s.why}`))));
}
async function apply(dry) {
  const dest = $("#apply-dest").value.trim();
  if (!dest) { toast("choose the quarantine folder first", true); $("#apply-dest").focus(); return; }
  const p = summary.data && summary.data.pending;
  if (!dry) {
    const ok = await confirmBox(`Move ${p ? p.files : "the"} duplicate originals (${p ? bytes(p.bytes) : "?"}) into ${dest}? ` +
      "One journaled move: Undo (or nearsort undo) puts every file back.");
    if (!ok) return;
  }
  try {
    const r = await api("/api/apply", {dest, dry_run: dry});
    showQuarantine(r.quarantine, dry);
    if (!dry) { toast(`moved ${r.quarantine.moved} files`); for (const g of Object.values(groups)) g.loaded = false; }
    await loadSummary();
  } catch (e) { fail(e); }
}
async function undoQuarantine() {
  const ok = await confirmBox("Undo the last journaled operation (the quarantine): move its files back where they were?");
  if (!ok) return;
  try {
    const r = (await api("/api/undo", {})).undo;
    const box = $("#apply-result");
    box.replaceChildren(el("p", {class: "done"}, r.undone ? `Undone: operation #${r.undone} (${r.undone_kind}), ${r.moved} files moved back.`
      : (r.message || "nothing to undo")));
    for (const l of r.left || []) box.append(el("p", {class: "warn"}, `left where it is: ${l.path || l.src || JSON.stringify(l)}`));
    for (const g of Object.values(groups)) g.loaded = false;
    await loadSummary();
  } catch (e) { fail(e); }
}

// ---------------------------------------------------------------- tabs and keys
const groups = {copies: new Groups("copies"), similar: new Groups("similar")};
let current = "copies";
function show(tab) {
  current = tab;
  for (const v of document.querySelectorAll(".view")) v.hidden = v.id !== `view-${tab}`;
  for (const b of document.querySelectorAll("#tabs button")) b.classList.toggle("on", b.dataset.tab === tab);
  if (groups[tab] && !groups[tab].loaded) groups[tab].reload().catch(fail);
  if (tab === "chain" && !chain.loaded) loadChain(0);
  if (tab === "quality" && !quality.loaded) loadQuality("dark", 0);
  if (tab === "apply") { showApplySummary(); loadSummary(); }
  if (tab === "search") setTimeout(() => $("#search-q").focus(), 0);
  if (location.hash !== `#${tab}`) history.replaceState(null, "", `#${tab}`);
}

let pendingKey = null;  // "m" (split) or "g" (go to a tab) waiting for its second key
const DIGIT = /^Digit([1-9])$/;
function onKey(e) {
  if (e.target.closest("input, textarea, select") || e.ctrlKey || e.metaKey || e.altKey) return;
  if (e.target.closest("button") && (e.key === "Enter" || e.key === " ")) return;  // the button's own click
  if (!$("#confirm").hidden) return;
  const help = $("#help");
  if (e.key === "?" ) { help.hidden = !help.hidden; e.preventDefault(); return; }
  if (e.key === "Escape") { help.hidden = true; pendingKey = null; return; }
  if (!help.hidden) return;
  const digit = (DIGIT.exec(e.code) || [])[1] || (/^[1-9]$/.test(e.key) ? e.key : null);
  if (pendingKey === "g") {
    pendingKey = null;
    const tab = {d: "copies", s: "similar", c: "chain", f: "search", q: "quality", a: "apply"}[e.key];
    if (tab) { show(tab); e.preventDefault(); }
    return;
  }
  if (e.key === "g") { pendingKey = "g"; return; }
  const G = groups[current];
  if (G) {
    if (pendingKey === "m") { pendingKey = null; if (digit) { serial(() => split(G, +digit)); e.preventDefault(); } return; }
    if (digit && e.shiftKey) { serial(() => split(G, +digit)); e.preventDefault(); return; }
    if (digit) { serial(() => G.choose(+digit)); e.preventDefault(); return; }
    switch (e.key) {
      case "j": case "ArrowDown": case "ArrowRight": serial(() => G.go(1)); break;
      case "k": case "ArrowUp": case "ArrowLeft": serial(() => G.go(-1)); break;
      case "a": case "Enter": serial(() => G.decide("accept")); break;
      case "n": serial(() => G.decide("distinct")); break;
      case "s": serial(() => G.decide("skip")); break;
      case "u": serial(() => G.undo()); break;
      case "m": pendingKey = "m"; break;
      default: return;
    }
    e.preventDefault();
    return;
  }
  const fwd = ["j", "ArrowRight", "ArrowDown"].includes(e.key), back = ["k", "ArrowLeft", "ArrowUp"].includes(e.key);
  if (current === "chain" && (fwd || back)) {
    const o = chain.offset + (fwd ? CHAIN_PAGE : -CHAIN_PAGE);
    if (o >= 0 && o < chain.total) loadChain(o);
    e.preventDefault();
  } else if (current === "quality" && (fwd || back)) {
    const o = quality.offset + (fwd ? QUALITY_PAGE : -QUALITY_PAGE);
    if (o >= 0 && o < quality.total) loadQuality(quality.kind, o);
    e.preventDefault();
  }
}
function split(G, n) {
  const g = G.group(); if (!g) return;
  const m = G.member(g, n); if (!m) return;
  return G.decide("distinct", {member: m.source_id});
}

function init() {
  history.replaceState(null, "", location.pathname + location.hash);  // the token leaves the address bar
  for (const b of document.querySelectorAll("#tabs button")) b.addEventListener("click", () => show(b.dataset.tab));
  $("#bulk-exact").addEventListener("click", () => groups.copies.acceptAllExact());
  $("#help .close").addEventListener("click", () => { $("#help").hidden = true; });
  $("#cheat").addEventListener("click", () => { $("#help").hidden = false; });
  const cv = $("#view-chain");
  $(".prev", cv).addEventListener("click", () => chain.offset > 0 && loadChain(chain.offset - CHAIN_PAGE));
  $(".next", cv).addEventListener("click", () => chain.offset + CHAIN_PAGE < chain.total && loadChain(chain.offset + CHAIN_PAGE));
  $("#search-form").addEventListener("submit", e => { e.preventDefault(); runSearch($("#search-q").value); });
  for (const b of document.querySelectorAll("#quality-kinds [data-q]")) b.addEventListener("click", () => loadQuality(b.dataset.q, 0));
  $("#quality-kinds .prev").addEventListener("click", () => quality.offset > 0 && loadQuality(quality.kind, quality.offset - QUALITY_PAGE));
  $("#quality-kinds .next").addEventListener("click", () => quality.offset + QUALITY_PAGE < quality.total && loadQuality(quality.kind, quality.offset + QUALITY_PAGE));
  $("#apply-dry").addEventListener("click", () => apply(true));
  $("#apply-go").addEventListener("click", () => apply(false));
  $("#apply-undo").addEventListener("click", undoQuarantine);
  $("#stale button").addEventListener("click", () => serial(async () => {
    toast("finding the duplicate groups again …");
    await api("/api/refresh-groups", {});
    for (const g of Object.values(groups)) g.loaded = false;
    await loadSummary();
    show(current);
  }));
  document.addEventListener("keydown", onKey);
  loadSummary();
  const tab = location.hash.slice(1);
  show(["copies", "similar", "chain", "search", "quality", "apply"].includes(tab) ? tab : "copies");
}
document.addEventListener("DOMContentLoaded", init);
