// difflens feature browser: plain JavaScript, no build step. Every text from the server is set with
// textContent (never innerHTML), so explanations and prompts render as text.
(function () {
  "use strict";

  function el(tag, cls, text) {
    var e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function fmt(v) {
    if (v === null || v === undefined || !isFinite(v)) return "–";
    if (v === 0) return "0";
    var a = Math.abs(v);
    return (a >= 1e4 || a < 1e-3) ? v.toExponential(2) : String(Number(v.toPrecision(3)));
  }

  var jsonCache = {};
  function getJSON(url) {
    if (!jsonCache[url]) {
      jsonCache[url] = fetch(url).then(function (r) {
        return r.json().then(function (body) {
          if (!r.ok) throw new Error(body && body.error ? body.error : ("HTTP " + r.status));
          return body;
        });
      });
    }
    return jsonCache[url];
  }

  // ---- overlay opacity -------------------------------------------------------------------------------------
  var opacity = document.getElementById("opacity");
  if (opacity) {
    var label = document.getElementById("opacity-value");
    var apply = function () {
      var v = Number(opacity.value) / 100;
      document.querySelectorAll(".tile .paint").forEach(function (img) { img.style.opacity = v; });
      if (label) label.textContent = opacity.value + "%";
    };
    opacity.addEventListener("input", apply);
    apply();
  }

  // ---- hover a token: its activation -----------------------------------------------------------------------
  function mapFor(tile) {
    return getJSON(tile.dataset.map).then(function (data) {
      if (data.maps) return data.maps[tile.dataset.key];  // static export: one JSON per feature
      return data;
    });
  }
  document.querySelectorAll(".tile[data-map]").forEach(function (tile) {
    var stack = tile.querySelector(".stack");
    var tip = tile.querySelector(".tip");
    if (!stack || !tip) return;
    stack.addEventListener("mousemove", function (ev) {
      mapFor(tile).then(function (m) {
        if (!m || !m.grid || m.grid.length !== 2) return;
        var rect = stack.getBoundingClientRect();
        var col = Math.floor((ev.clientX - rect.left) / rect.width * m.grid[1]);
        var row = Math.floor((ev.clientY - rect.top) / rect.height * m.grid[0]);
        if (row < 0 || col < 0 || row >= m.grid[0] || col >= m.grid[1]) return;
        var v = m.values[row * m.grid[1] + col];
        tip.textContent = "token (" + row + ", " + col + "): " + fmt(v);
        tip.hidden = false;
        var x = ev.clientX - rect.left, y = ev.clientY - rect.top;
        tip.style.left = Math.max(x > rect.width / 2 ? x - tip.offsetWidth - 8 : x + 10, 0) + "px";
        tip.style.top = Math.max(y - 26, 0) + "px";
      }).catch(function () {});
    });
    stack.addEventListener("mouseleave", function () { tip.hidden = true; });
  });

  // ---- live steering ---------------------------------------------------------------------------------------
  var form = document.getElementById("steer-form");
  if (form) {
    var pad = document.getElementById("boxpad");
    var boxEl = document.getElementById("box");
    var boxLabel = document.getElementById("box-label");
    var box = null, start = null;
    var strength = form.elements.strength, strengthOut = document.getElementById("strength-value");
    strength.addEventListener("input", function () { strengthOut.textContent = strength.value; });
    function frac(ev) {
      var r = pad.getBoundingClientRect();
      return [Math.min(Math.max((ev.clientX - r.left) / r.width, 0), 1), Math.min(Math.max((ev.clientY - r.top) / r.height, 0), 1)];
    }
    function drawBox(b) {
      if (!b) { boxEl.hidden = true; boxLabel.textContent = "region: whole image"; return; }
      boxEl.hidden = false;
      boxEl.style.left = (b[0] * 100) + "%"; boxEl.style.top = (b[1] * 100) + "%";
      boxEl.style.width = ((b[2] - b[0]) * 100) + "%"; boxEl.style.height = ((b[3] - b[1]) * 100) + "%";
      boxLabel.textContent = "region: box x " + b[0].toFixed(2) + "–" + b[2].toFixed(2) + ", y " + b[1].toFixed(2) + "–" + b[3].toFixed(2);
    }
    pad.addEventListener("mousedown", function (ev) { ev.preventDefault(); start = frac(ev); });
    window.addEventListener("mousemove", function (ev) {
      if (!start) return;
      var p = frac(ev);
      drawBox([Math.min(start[0], p[0]), Math.min(start[1], p[1]), Math.max(start[0], p[0]), Math.max(start[1], p[1])]);
    });
    window.addEventListener("mouseup", function (ev) {
      if (!start) return;
      var p = frac(ev);
      var b = [Math.min(start[0], p[0]), Math.min(start[1], p[1]), Math.max(start[0], p[0]), Math.max(start[1], p[1])];
      start = null;
      box = (b[2] - b[0] > 0.02 && b[3] - b[1] > 0.02) ? b : null;
      drawBox(box);
    });
    document.getElementById("clear-box").addEventListener("click", function () { box = null; drawBox(null); });

    var status = document.getElementById("steer-status");
    var results = document.getElementById("steer-results");
    var go = document.getElementById("steer-go");
    function show(job) {
      if (job.status === "queued") {
        status.textContent = "queued: position " + job.position + (job.running ? " (another generation is running)" : "");
      } else if (job.status === "running") {
        status.textContent = "generating…";
      } else if (job.status === "error" || job.status === "cancelled") {
        status.textContent = job.message;
        status.className = "status bad";
      } else if (job.status === "done") {
        status.textContent = "done in " + job.seconds + " s";
        status.className = "status good";
        document.getElementById("steer-baseline").src = job.result.baseline;
        document.getElementById("steer-steered").src = job.result.steered;
        var rec = job.result.record || {};
        var parts = [];
        ["mode", "strength", "amount", "strength_basis", "steps", "tokens", "edited_token_steps"].forEach(function (k) {
          if (rec[k] !== undefined && rec[k] !== null) parts.push(k + ": " + (Array.isArray(rec[k]) ? rec[k].join(",") : (typeof rec[k] === "number" ? fmt(rec[k]) : rec[k])));
        });
        document.getElementById("steer-record").textContent = parts.join("   ");
        results.hidden = false;
      }
    }
    var pending = null;  // the job this page waits for: cancelled when the page is closed, so it is not generated
    window.addEventListener("pagehide", function () {
      if (pending) fetch("/api/steer/" + encodeURIComponent(pending), {method: "DELETE", keepalive: true});
    });
    function poll(id) {
      pending = id;
      fetch("/api/steer/" + encodeURIComponent(id)).then(function (r) { return r.json(); }).then(function (job) {
        show(job);
        if (job.status === "queued" || job.status === "running") setTimeout(function () { poll(id); }, 250);
        else { pending = null; go.disabled = false; }
      }).catch(function (err) { status.textContent = "lost the job: " + err; go.disabled = false; });
    }
    form.addEventListener("submit", function (ev) {
      ev.preventDefault();
      var f = form.elements;
      var body = {
        dictionary: form.dataset.dictionary, latent: Number(form.dataset.latent), prompt: f.prompt.value,
        seed: Number(f.seed.value), mode: f.mode.value, strength: Number(f.strength.value),
        num_steps: Number(f.num_steps.value), step_start: Number(f.step_start.value), step_end: Number(f.step_end.value),
        box: box
      };
      status.className = "status";
      status.textContent = "sending…";
      go.disabled = true;
      fetch("/api/steer", {method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)})
        .then(function (r) { return r.json().then(function (j) { return [r.ok, j]; }); })
        .then(function (res) {
          if (!res[0]) { status.textContent = res[1].error || "refused"; status.className = "status bad"; go.disabled = false; return; }
          show(res[1]);
          poll(res[1].id);
        }).catch(function (err) { status.textContent = "request failed: " + err; go.disabled = false; });
    });
  }

  // ---- image page: click a token -----------------------------------------------------------------------------
  var tokenpad = document.getElementById("tokenpad");
  if (tokenpad && tokenpad.dataset.grid) {
    var g = tokenpad.dataset.grid.split("x").map(Number);
    var cell = document.getElementById("cell");
    var out = document.getElementById("token-results"), hint = document.getElementById("token-hint");
    tokenpad.addEventListener("click", function (ev) {
      var r = tokenpad.getBoundingClientRect();
      var col = Math.min(Math.floor((ev.clientX - r.left) / r.width * g[1]), g[1] - 1);
      var row = Math.min(Math.floor((ev.clientY - r.top) / r.height * g[0]), g[0] - 1);
      cell.hidden = false;
      cell.style.left = (col / g[1] * 100) + "%"; cell.style.top = (row / g[0] * 100) + "%";
      cell.style.width = (100 / g[1]) + "%"; cell.style.height = (100 / g[0]) + "%";
      var token = row * g[1] + col;
      hint.textContent = "token " + token + " (row " + row + ", column " + col + ") at step " + tokenpad.dataset.step + "…";
      getJSON("/api/token/" + tokenpad.dataset.image + "?step=" + tokenpad.dataset.step + "&token=" + token).then(function (data) {
        hint.textContent = "token " + token + " (row " + row + ", column " + col + ") at step " + data.step;
        out.textContent = "";
        data.dictionaries.forEach(function (d) {
          var block = el("div", "token-dict");
          var h = el("h3", null, d.dictionary + " ");
          h.appendChild(el("span", "kind", d.kind));
          h.appendChild(el("span", "muted", " " + d.active + " active · rel. error " + fmt(d.error)));
          block.appendChild(h);
          var table = el("table", "grid compact");
          var tb = el("tbody");
          d.items.forEach(function (it) {
            var tr = el("tr");
            var td = el("td", "n"); var a = el("a", null, it.latent); a.href = it.link; td.appendChild(a); tr.appendChild(td);
            tr.appendChild(el("td", "n", fmt(it.value)));
            var ex = el("td", "expl", it.explanation || "");
            if (it.concept) { ex.appendChild(document.createTextNode(" ")); ex.appendChild(el("code", null, it.concept)); }
            tr.appendChild(ex);
            tb.appendChild(tr);
          });
          if (!d.items.length) { var tr0 = el("tr"); var td0 = el("td", "muted", "no active latent"); td0.colSpan = 3; tr0.appendChild(td0); tb.appendChild(tr0); }
          table.appendChild(tb);
          block.appendChild(table);
          out.appendChild(block);
        });
      }).catch(function (err) { hint.textContent = String(err.message || err); });
    });
  }

  // ---- static export: sort and filter the feature table in the page ------------------------------------------
  var table = document.querySelector("table.sortable");
  if (table) {
    var tbody = table.tBodies[0];
    var rows = Array.prototype.slice.call(tbody.rows);
    var sortKey = "frequency", desc = true;
    var search = document.getElementById("t-search"), concept = document.getElementById("t-concept");
    var minScore = document.getElementById("t-min-score"), minAuroc = document.getElementById("t-min-auroc");
    var count = document.getElementById("t-count"), preciseOnly = document.getElementById("t-precise");
    var prefix = document.getElementById("t-prefix");
    function num(row, key) { var v = row.dataset[key]; return v === "" || v === undefined ? NaN : Number(v); }
    function refresh() {
      var q = (search.value || "").toLowerCase(), c = concept.value;
      var ms = minScore.value === "" ? null : Number(minScore.value), ma = minAuroc.value === "" ? null : Number(minAuroc.value);
      var shown = 0;
      rows.sort(function (a, b) {
        var x = num(a, sortKey), y = num(b, sortKey);
        if (isNaN(x) !== isNaN(y)) return isNaN(x) ? 1 : -1;
        if (x === y || (isNaN(x) && isNaN(y))) return num(a, "latent") - num(b, "latent");
        return desc ? y - x : x - y;
      });
      rows.forEach(function (row) {
        var text = row.textContent.toLowerCase();
        var ok = (!q || text.indexOf(q) >= 0) && (!c || row.dataset.concept === c || row.dataset.preciseConcept === c) &&
          (ms === null || num(row, "score") >= ms) && (ma === null || num(row, "auroc") >= ma) &&
          (!preciseOnly || !preciseOnly.checked || row.dataset.precise === "1") &&
          (!prefix || prefix.value === "" || row.dataset.prefix === prefix.value);
        row.hidden = !ok;
        if (ok) shown++;
        tbody.appendChild(row);
      });
      count.textContent = shown + " latents";
    }
    table.querySelectorAll("th[data-key]").forEach(function (th) {
      th.classList.add("clickable");
      th.addEventListener("click", function () {
        if (sortKey === th.dataset.key) desc = !desc; else { sortKey = th.dataset.key; desc = sortKey !== "latent"; }
        refresh();
      });
    });
    [search, concept, minScore, minAuroc, preciseOnly, prefix].forEach(function (e) { if (e) e.addEventListener("input", refresh); });
  }
})();
