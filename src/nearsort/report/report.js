(function () {
"use strict";
function $(id) { return document.getElementById(id); }
function J(id) { var e = $(id); return e ? JSON.parse(e.textContent) : null; }
function el(tag, cls, text) {
  var e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = String(text);
  return e;
}
var M = J("d-meta"), T = J("d-tables"), S = M.summary;
var cache = {};
function item(prefix, i) {
  var size = M.csize[prefix];
  var c = Math.floor(i / size), key = prefix + c;
  if (!(key in cache)) cache[key] = J("d-" + prefix + "-" + c) || [];
  return cache[key][i - c * size];
}
function bytes(n) {
  if (n === null || n === undefined) return "?";
  var u = ["B", "kB", "MB", "GB", "TB"], i = 0;
  while (Math.abs(n) >= 1000 && i < u.length - 1) { n /= 1000; i++; }
  return (i ? n.toFixed(1) : String(n)) + " " + u[i];
}
function num(n) { return Number(n).toLocaleString("en-US"); }
function path(s) { return T.sdirs[s[0]] + s[1]; }
function img(t, alt) {
  var box = el("div", "imgbox");
  if (t >= 0 && T.thumbs[t][1]) {
    var e = T.thumbs[t], i = document.createElement("img");
    i.loading = "lazy"; i.decoding = "async"; i.alt = alt || "";
    i.src = e[0] < 0 ? e[1] : T.tdirs[e[0]] + e[1];
    box.appendChild(i);
  } else box.appendChild(el("span", "m", "no thumbnail"));
  return box;
}
function lazy(container, total, batch, render, stag) {
  var done = 0, sentinel = el(stag || "div", "sentinel"), io = null;
  container.appendChild(sentinel);
  function more() {
    var end = Math.min(total, done + batch);
    var frag = document.createDocumentFragment();
    for (var i = done; i < end; i++) render(frag, i);
    container.insertBefore(frag, sentinel);
    done = end;
    if (done >= total && io) { io.disconnect(); sentinel.remove(); }
  }
  if ("IntersectionObserver" in window) {
    io = new IntersectionObserver(function (es) {
      for (var k = 0; k < es.length; k++) if (es[k].isIntersecting) { more(); return; }
    }, { rootMargin: "1500px 0px" });
    io.observe(sentinel);
  }
  more();
  if (!io) while (done < total) more();
  return { upTo: function (n) { while (done < Math.min(n, total)) more(); } };
}

// ---- header, nav, summary
$("title").textContent = M.title;
$("subtitle").textContent = "THUMBS " + M.root + " · generated " + M.generated +
  (M.model ? " · model " + M.model : "") + (M.ordering ? " · chain " + M.ordering : "");
var navItems = [["summary", "Summary", null], ["dupes", "Duplicates", S.groups], ["chain", "Chain", M.sizes.chain],
  ["quality", "Quality", S.dark + S.bright + S.blurry], ["broken", "Unreadable", S.errors]];
navItems.forEach(function (n) {
  var a = el("a", null, n[1]); a.href = "#" + n[0];
  if (n[2] !== null) a.appendChild(el("span", "n", num(n[2])));
  $("nav").appendChild(a);
});
(M.notes || []).forEach(function (t) { $("notes").appendChild(el("div", "note", t)); });
[[num(S.photos), "photos (" + num(S.distinct) + " distinct pictures)", ""],
 [num(S.groups), "duplicate groups", ""],
 [num(S.exact_groups) + " / " + num(S.near_groups), "exact / near groups", ""],
 [num(S.duplicates), "files that could go", ""],
 [bytes(S.reclaimable), "reclaimable", "accent"],
 [num(S.mirrors), "mirror images (kept)", ""],
 [num(S.shots || 0), "similar shots (kept)", ""],
 [num(S.dark) + " / " + num(S.bright) + " / " + num(S.blurry), "dark / bright / blurry", ""],
 [num(S.errors), "unreadable files", S.errors ? "warn" : ""],
 [num(S.quarantined), "quarantined so far", ""]].forEach(function (c) {
  var d = el("div", "card " + c[2]); d.appendChild(el("div", "v", c[0])); d.appendChild(el("div", "l", c[1]));
  $("cards").appendChild(d);
});

// ---- duplicate groups
var REL = { keeper: "KEEP", exact: "exact copy", perceptual: "same picture", near: "near duplicate" };
function tile(src, t, badge, badgeCls, lines, cls) {
  var d = el("div", "tile" + (cls ? " " + cls : ""));
  var p = path(src);
  d.title = p;
  d.appendChild(img(t, src[1]));
  if (badge) d.appendChild(el("span", "badge " + (badgeCls || ""), badge));
  var cap = el("div", "cap");
  lines.forEach(function (l) { if (l) cap.appendChild(l); });
  cap.appendChild(el("div", "name", src[1]));
  cap.appendChild(el("div", "dir", T.sdirs[src[0]]));
  d.appendChild(cap);
  return d;
}
$("dupes-hint").textContent = M.sizes.groups ?
  "Each row shows copies of one picture, largest savings first. The keeper (green) is chosen by: " +
  String(M.dupes.keep).split(",").join(" → ") + ". Mirror images are shown dashed: similar, never offered for deletion. To move the other copies " +
  "aside: nearsort dupes THUMBS --move-to FOLDER (nearsort undo THUMBS puts them back)." :
  "";
if (!M.sizes.groups) $("groups").appendChild(el("div", "empty", "No duplicates found."));
else lazy($("groups"), M.sizes.groups, 20, function (frag, i) {
  var g = item("groups", i), box = el("div", "group"), head = el("div", "ghead");
  head.appendChild(el("span", "t", "Group " + g[0]));
  head.appendChild(el("span", "chip " + g[1], g[1] === "exact" ? "exact copies" : g[1] === "near" ? "near duplicates" : "same picture"));
  g[2].forEach(function (e) { head.appendChild(el("span", "chip", "evidence: " + e)); });
  head.appendChild(el("span", "save", g[4].length + " files · " + bytes(g[3]) + " reclaimable"));
  box.appendChild(head);
  var row = el("div", "members");
  g[4].forEach(function (m) {
    var keep = m[9] === 1;
    var meta = el("div", "m", [bytes(m[5]), m[10]].filter(Boolean).join(" · "));
    var extra = [m[6] || "no date", m[7], m[8] ? "GPS" : null].filter(Boolean).join(" · ");
    row.appendChild(tile(m[0], m[1], keep ? "★ KEEP" : REL[m[2]] || m[2], keep ? "keep" : m[2],
      [el("div", "res", m[3] + " × " + m[4]), meta, el("div", "m", extra)], keep ? "keep" : ""));
  });
  g[5].forEach(function (s) {
    row.appendChild(tile(s[0][0], s[1], s[2] === "shot" ? "similar shot" : "mirror image", "mirror",
      [el("div", "m", "similar, kept" + (s[0].length > 1 ? " (+" + (s[0].length - 1) + " copies)" : ""))], "mirror"));
  });
  box.appendChild(row);
  frag.appendChild(box);
});

// ---- chain
var n = M.sizes.chain;
if (!n) {
  $("chain-hint").textContent = "";
  $("strip").replaceWith(el("div", "empty", "No similarity chain yet: run `nearsort analyze` on THUMBS, then make the report again."));
} else {
  $("chain-hint").textContent = num(n) + " pictures in chain order (" + M.ordering +
    "): neighbours look alike. Red bars mark the biggest jumps (distance ≥ " + (M.marked / 1000).toFixed(3) +
    ") — where one subject ends and the next begins.";
  var strip = lazy($("strip"), n, 600, function (frag, i) {
    var j = item("jumps", i);
    if (i > 0 && j >= M.marked) {
      var b = el("div", "j"); b.dataset.j = (j / 1000).toFixed(2); b.id = "jump-" + i;
      b.title = "jump " + (j / 1000).toFixed(3) + " before #" + (i + 1); frag.appendChild(b);
    }
    var c = el("div", "c"); c.title = "#" + (i + 1) + (j >= 0 ? " · step " + (j / 1000).toFixed(3) : "");
    var t = item("chain", i);
    if (t >= 0) {
      var e = T.thumbs[t], im = document.createElement("img");
      im.loading = "lazy"; im.decoding = "async"; im.alt = ""; im.src = e[0] < 0 ? e[1] : T.tdirs[e[0]] + e[1];
      c.appendChild(im);
    }
    frag.appendChild(c);
  });
  var top = [];
  for (var i = 1; i < n; i++) { var jj = item("jumps", i); if (jj >= M.marked) top.push([jj, i]); }
  top.sort(function (a, b) { return b[0] - a[0]; });
  if (top.length) $("jumps").appendChild(el("span", "m", "Biggest jumps:"));
  top.slice(0, 12).forEach(function (t) {
    var btn = el("button", null, "#" + (t[1] + 1) + " · " + (t[0] / 1000).toFixed(2));
    btn.addEventListener("click", function () {
      strip.upTo(t[1] + 1);
      var b = $("jump-" + t[1]); if (b) b.scrollIntoView({ behavior: "smooth", block: "center" });
    });
    $("jumps").appendChild(btn);
  });
}

// ---- quality
var QL = { dark: "Dark", bright: "Overexposed", blurry: "Blurry" };
var TH = M.thresholds;
$("quality-hint").textContent = "Worst first. Dark: brightness < " + TH.dark + " · overexposed: brightness > " +
  TH.bright + " · blurry: sharpness (Laplacian variance) < " + TH.blurry + " (thresholds from this library, within fixed guards).";
["dark", "bright", "blurry"].forEach(function (k) {
  var total = M.sizes["q" + k];
  if (total === undefined) return;
  $("qual").appendChild(el("h3", "subh", QL[k] + " (" + num(total) + ")"));
  if (!total) { $("qual").appendChild(el("div", "empty", "None.")); return; }
  var g = el("div", "gallery"); $("qual").appendChild(g);
  lazy(g, total, 60, function (frag, i) {
    var q = item("q" + k, i);
    var score = k === "blurry" ? "sharpness " + q[5] : "brightness " + q[3];
    frag.appendChild(tile(q[1], q[0], null, null, [el("div", "res", score),
      el("div", "m", q[6] + " × " + q[7] + (q[2] > 1 ? " · " + q[2] + " copies" : ""))]));
  });
});

// ---- errors
if (!M.sizes.errors) $("errors").appendChild(el("div", "empty", "None: every file could be read."));
else {
  var tbl = el("table"), thead = el("tr");
  ["File", "Reason", "Size"].forEach(function (h) { thead.appendChild(el("th", null, h)); });
  tbl.appendChild(thead); $("errors").appendChild(tbl);
  var body = el("tbody"); tbl.appendChild(body);
  lazy(body, M.sizes.errors, 200, function (frag, i) {
    var e = item("errors", i), tr = el("tr");
    tr.appendChild(el("td", "path", path(e[0])));
    tr.appendChild(el("td", "err", e[1]));
    tr.appendChild(el("td", null, e[2] ? bytes(e[2]) : "—"));
    frag.appendChild(tr);
  }, "tr");
}
})();
