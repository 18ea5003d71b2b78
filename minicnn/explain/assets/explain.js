// minicnn explain: draws the data minicnn wrote into this page (or its server sends) and shows, on a
// click, the arithmetic that made a number. Every operand is a float32 value minicnn computed; the
// products are float32 (Math.fround of an exact double product), sums run in double precision and
// are shown beside minicnn's own output so the two can be compared.
"use strict";
(function () {
  let D = null;            // the data (see minicnn/explain/payload.py)
  const S = { out: new Map(), w: new Map(), page: new Map(), cam: new Map(), updates: 0 };

  // -- arrays -------------------------------------------------------------------------------------
  function b64f32(b64) {
    const bin = atob(b64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    return new Float32Array(bytes.buffer);
  }
  function prod(a) { return a.reduce((x, y) => x * y, 1); }
  function range(n) { return Array.from({ length: n }, (_, i) => i); }
  // a tensor whose first-axis rows are known individually (all of them, or the ones shipped)
  function mkTensor(t) {
    const T = { shape: t.shape, per: prod(t.shape.slice(1)), rows: new Map() };
    addRows(T, t);
    return T;
  }
  function addRows(T, t) {
    const a = b64f32(t.b64);
    const idx = t.rows || range(t.shape[0]);
    idx.forEach((r, k) => T.rows.set(r, a.subarray(k * T.per, (k + 1) * T.per)));
  }
  function outT(i) { return i < 0 ? S.input : S.out.get(i); }
  async function need(T, what, i, rows) {
    // true when every row is at hand; the served page asks its server for the missing ones
    const missing = rows.filter((r) => !T.rows.has(r));
    if (!missing.length) return true;
    if (!D.served) return false;
    const q = `/api/${what}?layer=${i}&rows=${missing.join(",")}`;
    const res = await fetch(q);
    if (!res.ok) throw new Error(`${q}: ${res.status} ${await res.text()}`);
    addRows(T, await res.json());
    return true;
  }

  // -- numbers --------------------------------------------------------------------------------------
  function fmt(v) {
    if (!isFinite(v)) return String(v);
    const a = Math.abs(v);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(3);
    return v.toFixed(4);
  }
  function full(v) { return isFinite(v) ? Number(v.toPrecision(7)).toString() : String(v); }
  function num(v, role) { return `<b data-role="${role}" data-value="${v}">${full(v)}</b>`; }
  function agree(mine, theirs, scale) {
    const d = Math.abs(mine - theirs);
    const ok = d <= 1e-6 * (scale || Math.abs(theirs)) + 1e-6;
    return `<span class="${ok ? "ok" : "off"}">(difference ${d.toExponential(1)}${ok ? ", float32 rounding" : ""})</span>`;
  }
  function esc(s) { return String(s).replace(/[&<>"]/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;" }[c])); }

  // -- colours ----------------------------------------------------------------------------------
  function scaleOf(T) {
    let m = 0;
    for (const row of T.rows.values()) for (let k = 0; k < row.length; k++) { const a = Math.abs(row[k]); if (a > m) m = a; }
    return m || 1;
  }
  function colour(v, m) {
    const t = Math.max(-1, Math.min(1, v / m));
    if (t >= 0) return [255, Math.round(255 - 175 * t), Math.round(255 - 235 * t)];
    return [Math.round(255 + 225 * t), Math.round(255 + 120 * t), 255];
  }
  function paint(canvas, h, w, fn) {
    canvas.width = w; canvas.height = h;
    const ctx = canvas.getContext("2d");
    const img = ctx.createImageData(w, h);
    for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
      const [r, g, b] = fn(y, x);
      const k = 4 * (y * w + x);
      img.data[k] = r; img.data[k + 1] = g; img.data[k + 2] = b; img.data[k + 3] = 255;
    }
    ctx.putImageData(img, 0, 0);
    return canvas;
  }
  // the input as a picture: RGB with the normalisation undone, or grey in [0, 1]
  function inputPixel(y, x) {
    const T = S.input, [C, H, W] = T.shape, k = y * W + x;
    if (D.input.kind === "rgb" && C === 3) {
      const [mean, std] = D.input.norm || [[0, 0, 0], [1, 1, 1]];
      return [0, 1, 2].map((c) => Math.max(0, Math.min(255, Math.round(255 * (T.rows.get(c)[k] * std[c] + mean[c])))));
    }
    const g = Math.max(0, Math.min(255, Math.round(255 * T.rows.get(0)[k])));
    return [g, g, g];
  }

  // -- the network columns ------------------------------------------------------------------------
  function spatial(shape) { return shape.length === 3 && shape[1] * shape[2] > 1; }
  function pageSize(C) { return C <= 16 ? C : 8; }
  function channelList(i) {
    const T = outT(i);
    return D.served ? range(T.shape[0]) : Array.from(T.rows.keys()).sort((a, b) => a - b);
  }
  function groupNames() {
    const g = new Set(D.groups);
    D.layers.forEach((L) => { if (L.block) g.add(L.name); });
    return g;
  }
  function renderNetwork() {
    const net = document.getElementById("network");
    net.innerHTML = "";
    net.appendChild(makeColumn(-1));
    const groups = groupNames();
    const stack = [{ name: null, body: net }];
    D.layers.forEach((L, i) => {
      const parts = L.name.split(".");
      const anc = [];
      for (let k = 1; k < parts.length; k++) { const p = parts.slice(0, k).join("."); if (groups.has(p)) anc.push(p); }
      if (L.block) anc.push(L.name);
      while (stack.length > 1 && !anc.includes(stack[stack.length - 1].name)) stack.pop();
      for (const a of anc) {
        if (stack.some((s) => s.name === a)) continue;
        const g = document.createElement("div");
        g.className = "group"; g.dataset.layer = a;
        g.innerHTML = `<div class="glabel">${esc(a)}</div><div class="gbody"></div>`;
        stack[stack.length - 1].body.appendChild(g);
        stack.push({ name: a, body: g.querySelector(".gbody") });
      }
      stack[stack.length - 1].body.appendChild(makeColumn(i));
    });
  }
  function makeColumn(i) {
    const col = document.createElement("div");
    const L = i < 0 ? null : D.layers[i];
    const T = outT(i);
    col.className = "column" + (L && L.block ? " block" : "");
    col.dataset.layer = L ? L.name : "input";
    col.dataset.index = i;
    const shape = T.shape.join("×");
    const title = L ? L.label : "input";
    const kind = L ? (L.block ? `${L.kind}: relu(main + identity)` : L.kind) : "the image";
    const params = L ? `${L.params.toLocaleString("en")} parameters` : "";
    const shipped = T.rows.size < T.shape[0] && !D.served ? `; ${T.rows.size} of ${T.shape[0]} channels in this file` : "";
    col.innerHTML = `<h3>${esc(title)}</h3><div class="meta">${esc(kind)}<br>${L ? L.in_shape.join("×") + " → " : ""}${shape}<br>${params}${shipped}</div><div class="maps"></div>`;
    if (i < 0 && D.input.kind === "rgb") {
      const c = document.createElement("canvas");
      c.className = "pixelated";
      c.style.width = "140px";
      paint(c, T.shape[1], T.shape[2], inputPixel);
      col.insertBefore(c, col.querySelector(".maps"));
    }
    S.page.set(i, S.page.get(i) || 0);
    drawMaps(col, i);
    return col;
  }
  async function drawMaps(col, i) {
    const T = outT(i), box = col.querySelector(".maps");
    box.innerHTML = "";
    col.querySelectorAll(".pager").forEach((p) => p.remove());
    if (!spatial(T.shape)) { drawVector(box, i); return; }
    const chans = channelList(i), ps = pageSize(chans.length);
    const start = Math.min(S.page.get(i), Math.max(0, chans.length - ps));
    const shown = chans.slice(start, start + ps);
    await need(T, "tensor", i, shown);
    const m = scaleOf(T), [, H, W] = T.shape;
    for (const c of shown) {
      const div = document.createElement("div");
      div.className = "map" + (ps > 8 ? " small" : "");
      const cv = document.createElement("canvas");
      cv.dataset.channel = c;
      const row = T.rows.get(c);
      paint(cv, H, W, (y, x) => colour(row[y * W + x], m));
      cv.addEventListener("click", (ev) => {
        const r = cv.getBoundingClientRect();
        const x = Math.min(W - 1, Math.floor((ev.clientX - r.left) / r.width * W));
        const y = Math.min(H - 1, Math.floor((ev.clientY - r.top) / r.height * H));
        showDetail(i, [c, y, x]);
      });
      div.appendChild(cv);
      div.insertAdjacentHTML("beforeend", `<span>ch ${c}</span>`);
      box.appendChild(div);
    }
    if (chans.length > ps) {
      const pager = document.createElement("div");
      pager.className = "pager";
      pager.innerHTML = `<button type="button" data-step="-1">◀</button><span>ch ${shown[0]}–${shown[shown.length - 1]} (${chans.length})</span><button type="button" data-step="1">▶</button>`;
      pager.querySelectorAll("button").forEach((b) => b.addEventListener("click", () => {
        const n = S.page.get(i) + Number(b.dataset.step) * ps;
        S.page.set(i, Math.max(0, Math.min(n, chans.length - 1)));
        drawMaps(col, i).catch(report);
      }));
      col.appendChild(pager);
    }
  }
  function drawVector(box, i) {
    const T = outT(i), n = T.shape[0];
    const vals = range(n).map((k) => (T.rows.has(k) ? T.rows.get(k)[0] : NaN));
    const cols = n <= 16 ? 1 : Math.ceil(Math.sqrt(n)), rows = Math.ceil(n / cols);
    const m = Math.max(1e-30, ...vals.filter(isFinite).map(Math.abs));
    const cv = document.createElement("canvas");
    cv.dataset.channel = "vector";
    paint(cv, rows, cols, (y, x) => { const k = y * cols + x; return k < n && isFinite(vals[k]) ? colour(vals[k], m) : [238, 238, 238]; });
    cv.style.height = Math.min(400, Math.max(20, (140 / cols) * rows)) + "px";
    if (n <= 16) cv.style.width = "20px";
    const div = document.createElement("div");
    div.className = "vector";
    div.appendChild(cv);
    if (n <= 16) {
      const lab = document.createElement("div");
      lab.className = "meta";
      lab.innerHTML = vals.map((v, k) => `${k}: ${fmt(v)}`).join("<br>");
      div.appendChild(lab);
      div.style.display = "flex"; div.style.gap = "4px";
    }
    cv.addEventListener("click", (ev) => {
      const r = cv.getBoundingClientRect();
      const x = Math.min(cols - 1, Math.floor((ev.clientX - r.left) / r.width * cols));
      const y = Math.min(rows - 1, Math.floor((ev.clientY - r.top) / r.height * rows));
      const k = Math.min(n - 1, y * cols + x);
      showDetail(i, T.shape.length === 3 ? [k, 0, 0] : [k]);
    });
    box.appendChild(div);
  }

  // -- the click view -------------------------------------------------------------------------------
  function at(T, idx) {
    const row = T.rows.get(idx[0]);
    if (!row) return NaN;
    if (idx.length === 1) return row[0];
    return row[idx[1] * T.shape[2] + idx[2]];
  }
  function grid(rowsArr, caption, cls) {
    let h = `<table class="grid"><caption>${esc(caption)}</caption>`;
    rowsArr.forEach((r, a) => { h += "<tr>" + r.map((v, b) => `<td class="${(cls && cls(a, b)) || ""}" title="${v}">${fmt(v)}</td>`).join("") + "</tr>"; });
    return h + "</table>";
  }
  const MISSING = "This number's operands are not in this file (it ships a sample of the channels); "
    + "run <code>minicnn explain ... --serve</code>, or write the page with <code>--channels all</code>.";

  async function showDetail(i, idx) {
    const box = document.getElementById("detail");
    const L = D.layers[i];
    box.dataset.layer = L ? L.name : "input";
    box.dataset.index = idx.join(",");
    document.querySelectorAll(".selected-px").forEach((e) => e.classList.remove("selected-px"));
    const sel = document.querySelector(`.column[data-index="${i}"] canvas[data-channel="${idx.length === 3 && spatial(outT(i).shape) ? idx[0] : "vector"}"]`);
    if (sel) sel.classList.add("selected-px");
    try {
      let html;
      if (!L) {
        html = `<h3>input[${idx.join(", ")}]</h3><p class="eq">the image, preprocessed: ${num(at(S.input, idx), "output")}</p>`;
      } else {
        html = `<h3>${esc(L.label)} · ${esc(L.kind)} · output[${idx.join(", ")}]</h3>` + await explain(i, idx);
        if (L.kind !== "Linear") html += await chain(i, idx);
      }
      box.innerHTML = html;
      const op = box.querySelector("[data-op]");
      box.dataset.op = op ? op.dataset.op : "";
      const anim = box.querySelector("button.slide");
      if (anim) { anim.addEventListener("click", () => slide(i, idx)); slide(i, idx); }
      box.querySelectorAll(".cpager button").forEach((b) => b.addEventListener("click", () => {
        S.convPage = Math.max(0, (S.convPage || 0) + Number(b.dataset.step));
        showDetail(i, idx).catch(report);
      }));
    } catch (e) { box.innerHTML = `<p class="off">${esc(e.message)}</p>`; report(e); }
  }

  async function explain(i, idx) {
    const L = D.layers[i], y = outT(i);
    const mine = at(y, idx);
    switch (L.kind) {
      case "Conv2d": return conv(i, idx, mine);
      case "MaxPool2d": case "AvgPool2d": case "AdaptiveAvgPool2d": case "AdaptiveMaxPool2d": return pool(i, idx, mine);
      case "BatchNorm2d": {
        const x = outT(L.inputs[0]);
        if (!await need(x, "tensor", L.inputs[0], [idx[0]])) return MISSING;
        return `<div data-op="batchnorm">${bnStep(i, idx, at(x, idx))}</div>`;
      }
      case "ReLU": case "Dropout": case "Dropout2d": {
        const x = outT(L.inputs[0]);
        if (!await need(x, "tensor", L.inputs[0], [idx[0]])) return MISSING;
        return `<div data-op="relu">${eltStep(i, idx, at(x, idx))}</div>`;
      }
      case "Flatten": {
        const x = outT(L.inputs[0]), [C, H, W] = x.shape, k = idx[0];
        const src = [Math.floor(k / (H * W)), Math.floor(k / W) % H, k % W];
        if (!await need(x, "tensor", L.inputs[0], [src[0]])) return MISSING;
        return `<div data-op="flatten"><p class="eq">flatten: element ${k} is input[${src.join(", ")}] (c·${H * W} + h·${W} + w) = ${num(at(x, src), "total")}; minicnn: ${num(mine, "output")}</p></div>`;
      }
      case "Linear": return linear(i, idx, mine);
      default:
        if (L.block) {
          const a = outT(L.inputs[0]), b = outT(L.inputs[1]);
          if (!await need(a, "tensor", L.inputs[0], [idx[0]]) || !await need(b, "tensor", L.inputs[1], [idx[0]])) return MISSING;
          return `<div data-op="join">${joinStep(i, idx, at(a, idx), at(b, idx))}</div>`;
        }
        return `<p>${esc(L.kind)}: minicnn's output ${num(mine, "output")}</p>`;
    }
  }

  async function conv(i, idx, mine) {
    const L = D.layers[i], cfg = L.config, [c, h, w] = idx;
    if (cfg.pad_op) return `<p>This convolution pads with a separate pad op first; its click view is not drawn.</p>`;
    const src = L.inputs[0], X = outT(src), [Cin, Hin, Win] = X.shape;
    const cg = cfg.in_channels / cfg.groups, g = Math.floor(c / (cfg.out_channels / cfg.groups));
    const chans = range(cg).map((k) => g * cg + k);
    const Wt = S.w.get(i).weight;
    if (!await need(X, "tensor", src, chans) || !await need(Wt, "weight", i, [c])) return MISSING;
    const [kh, kw] = cfg.kernel_size, [sh, sw] = cfg.stride, [ph, pw] = cfg.padding, [dh, dw] = cfg.dilation;
    const bias = S.w.get(i).bias ? S.w.get(i).bias.rows.get(0)[c] : 0;
    const wrow = Wt.rows.get(c);
    let total = 0, absum = Math.abs(bias);
    const per = [];
    for (let k = 0; k < cg; k++) {
      const xr = X.rows.get(chans[k]);
      const patch = [], kern = [], prods = [], pad = [];
      let s = 0;
      for (let a = 0; a < kh; a++) {
        const pr = [], kr = [], rr = [], dr = [];
        for (let b = 0; b < kw; b++) {
          const r = h * sh - ph + a * dh, q = w * sw - pw + b * dw;
          const inside = r >= 0 && r < Hin && q >= 0 && q < Win;
          const xv = inside ? xr[r * Win + q] : 0, wv = wrow[(k * kh + a) * kw + b];
          const p = Math.fround(xv * wv);
          pr.push(xv); kr.push(wv); rr.push(p); dr.push(!inside);
          s += p; absum += Math.abs(p);
        }
        patch.push(pr); kern.push(kr); prods.push(rr); pad.push(dr);
      }
      total += s;
      per.push({ ch: chans[k], patch, kern, prods, pad, s });
    }
    const value = total + bias;
    const P = 4, pages = Math.ceil(cg / P);
    S.convPage = Math.min(S.convPage || 0, pages - 1);
    const shown = per.slice(S.convPage * P, S.convPage * P + P);
    let html = `<div data-op="conv"><div class="anim"><button class="slide" type="button">▶ slide the kernel</button><canvas id="anim-in"></canvas><canvas id="anim-out"></canvas>`
      + `<span class="hint">input channel ${per.reduce((b, p) => (Math.abs(p.s) > Math.abs(b.s) ? p : b)).ch} (the largest part of the sum) and output channel ${c}</span></div>`;
    html += `<p class="eq">output[${c}, ${h}, ${w}] = Σ over ${cg} input channel${cg > 1 ? "s" : ""} × ${kh}×${kw} of input patch × kernel, + bias. Window origin (${h * sh - ph}, ${w * sw - pw}); grey cells are zero padding.</p>`;
    for (const p of shown) {
      html += `<div class="grids">${grid(p.patch, `input ch ${p.ch}`, (a, b) => (p.pad[a][b] ? "pad" : ""))}<span>×</span>`
        + `${grid(p.kern, `kernel [${c}, ${p.ch - g * cg}]`)}<span>=</span>${grid(p.prods, "products")}<span>Σ = ${full(p.s)}</span></div>`;
    }
    if (pages > 1) html += `<div class="pager cpager"><button type="button" data-step="-1">◀</button> input channels ${S.convPage * P}–${Math.min(cg, S.convPage * P + P) - 1} of ${cg} <button type="button" data-step="1">▶</button></div>`;
    if (cg > 1) html += `<div class="hint">sum per input channel:</div><div class="chan-sums">${per.map((p) => `${p.ch}: ${fmt(p.s)}`).join("<br>")}</div>`;
    html += `<p class="eq">Σ products = ${num(total, "sum")} ; + bias ${num(bias, "bias")} = ${num(value, "total")}</p>`;
    html += `<p class="eq">minicnn's output: ${num(mine, "output")} ${agree(value, mine, absum)}</p></div>`;
    return html;
  }

  function poolWindow(L, Hin, Win, oi, oj) {
    const cfg = L.config;
    if (L.kind.startsWith("Adaptive")) {
      const [oh, ow] = cfg.output_size;
      const bin = (n, o, k) => [Math.floor((k * n) / o), Math.ceil(((k + 1) * n) / o)];
      const [r0, r1] = bin(Hin, oh, oi), [c0, c1] = bin(Win, ow, oj);
      return { rows: range(r1 - r0).map((k) => r0 + k), cols: range(c1 - c0).map((k) => c0 + k) };
    }
    const [kh, kw] = cfg.kernel_size, [sh, sw] = cfg.stride, [ph, pw] = cfg.padding, [dh, dw] = cfg.dilation;
    return { rows: range(kh).map((a) => oi * sh - ph + a * dh), cols: range(kw).map((b) => oj * sw - pw + b * dw) };
  }
  // the numbers of pooling window (oi, oj) of layer i over channel c of its input
  function poolNumbers(i, c, oi, oj) {
    const L = D.layers[i], X = outT(L.inputs[0]), [, Hin, Win] = X.shape, xr = X.rows.get(c);
    const { rows, cols } = poolWindow(L, Hin, Win, oi, oj);
    const vals = rows.map((r) => cols.map((q) => (r >= 0 && r < Hin && q >= 0 && q < Win ? xr[r * Win + q] : NaN)));
    const isMax = L.kind.includes("Max");
    let best = -Infinity, pick = null, s = 0, n = 0;
    vals.forEach((r, a) => r.forEach((v, b) => {
      if (isNaN(v)) return;
      n++; s += v;
      if (v > best) { best = v; pick = [a, b]; }
    }));
    let value;
    if (isMax) value = best;
    else {
      const cfg = L.config;
      const count = L.kind.startsWith("Adaptive") || !cfg.count_include_pad ? n : rows.length * cols.length;
      value = s / (cfg.divisor_override || count);
      return { rows, cols, vals, pick: null, value, sum: s, count: cfg.divisor_override || count, isMax };
    }
    return { rows, cols, vals, pick: [rows[pick[0]], cols[pick[1]]], pickAt: pick, value, isMax };
  }
  function poolHtml(i, c, oi, oj, mark) {
    const L = D.layers[i], P = poolNumbers(i, c, oi, oj);
    const cls = (a, b) => (isNaN(P.vals[a][b]) ? "pad" : (P.pickAt && P.pickAt[0] === a && P.pickAt[1] === b) || (mark && P.rows[a] === mark[0] && P.cols[b] === mark[1] && !P.isMax) ? "pick" : "");
    let h = `<div class="grids">${grid(P.vals.map((r) => r.map((v) => (isNaN(v) ? -Infinity : v))), `${L.label} window rows ${P.rows[0]}..${P.rows[P.rows.length - 1]}, cols ${P.cols[0]}..${P.cols[P.cols.length - 1]}`, cls)}</div>`;
    const y = outT(i), mine = at(y, [c, oi, oj]);
    if (P.isMax) h += `<p class="eq">max of the window = ${num(P.value, "total")} at input (${P.pick.join(", ")})${mark ? (P.pick[0] === mark[0] && P.pick[1] === mark[1] ? " — <b>this pixel is the one picked</b>" : " — this pixel is not the maximum, so it does not pass") : ""}</p>`;
    else h += `<p class="eq">mean = ${full(P.sum)} / ${P.count} = ${num(P.value, "total")}</p>`;
    h += `<p class="eq">minicnn's ${L.label}[${c}, ${oi}, ${oj}]: ${isNaN(mine) ? "not in this file" : num(mine, "output")} ${isNaN(mine) ? "" : agree(P.value, mine)}</p>`;
    return h;
  }
  async function pool(i, idx, mine) {
    const L = D.layers[i], src = L.inputs[0];
    if (!await need(outT(src), "tensor", src, [idx[0]])) return MISSING;
    return `<div data-op="${L.kind.includes("Max") ? "maxpool" : "avgpool"}">${poolHtml(i, idx[0], idx[1], idx[2], null)}</div>`;
  }
  function bnStep(i, idx, x) {
    const L = D.layers[i], W = S.w.get(i), c = idx[0];
    const mean = W.running_mean.rows.get(0)[c], vr = W.running_var.rows.get(0)[c], eps = L.config.eps;
    const gamma = W.weight ? W.weight.rows.get(0)[c] : 1, beta = W.bias ? W.bias.rows.get(0)[c] : 0;
    const xhat = (x - mean) / Math.sqrt(vr + eps), v = gamma * xhat + beta, mine = at(outT(i), idx);
    return `<p class="eq">${esc(L.label)}: (x − mean) / √(var + eps) · gamma + beta = (${full(x)} − ${full(mean)}) / √(${full(vr)} + ${eps}) · ${full(gamma)} + ${full(beta)} = ${num(v, "total")}</p>`
      + `<p class="eq">minicnn: ${isNaN(mine) ? "not in this file" : num(mine, "output") + " " + agree(v, mine)}</p>`;
  }
  function eltStep(i, idx, x) {
    const L = D.layers[i], mine = at(outT(i), idx);
    const v = L.kind === "ReLU" ? Math.max(0, x) : x;
    const f = L.kind === "ReLU" ? `max(0, ${full(x)})` : `${full(x)} (dropout is the identity at evaluation)`;
    return `<p class="eq">${esc(L.label)}: ${f} = ${num(v, "total")}; minicnn: ${isNaN(mine) ? "not in this file" : num(mine, "output")}</p>`;
  }
  function joinStep(i, idx, a, b) {
    const L = D.layers[i], mine = at(outT(i), idx), s = a + b, v = Math.max(0, s);
    const names = L.inputs.map((j) => (j < 0 ? "input" : D.layers[j].label));
    return `<p class="eq">${esc(L.label)}: relu(main + identity) = max(0, ${full(a)} [${esc(names[0])}] + ${full(b)} [${esc(names[1])}]) = max(0, ${full(s)}) = ${num(v, "total")}; minicnn: ${isNaN(mine) ? "not in this file" : num(mine, "output")}</p>`;
  }
  // what happens to this number next, while the next layers work channel by channel
  async function chain(i, idx) {
    if (idx.length !== 3) return "";
    let cur = i, html = "";
    for (let guard = 0; guard < 8; guard++) {
      const cons = D.layers.map((L, j) => [L, j]).filter(([L]) => L.inputs[0] === cur);
      if (cons.length !== 1) break;
      const [L, j] = cons[0];
      const yT = outT(cur);
      const x = at(yT, idx);
      if (isNaN(x)) break;
      if (L.kind === "BatchNorm2d") html += `<div class="step">then ${bnStep(j, idx, x)}</div>`;
      else if (L.kind === "ReLU" || L.kind === "Dropout") html += `<div class="step">then ${eltStep(j, idx, x)}</div>`;
      else if (L.block) {
        const b = outT(L.inputs[1]);
        if (!await need(b, "tensor", L.inputs[1], [idx[0]])) break;
        html += `<div class="step">then ${joinStep(j, idx, x, at(b, idx))}</div>`;
      } else if (L.kind.includes("Pool")) {
        const [, Hin, Win] = yT.shape, out = outT(j);
        let hit = null;
        for (let oi = 0; oi < out.shape[1] && !hit; oi++) for (let oj = 0; oj < out.shape[2] && !hit; oj++) {
          const wdw = poolWindow(L, Hin, Win, oi, oj);
          if (wdw.rows.includes(idx[1]) && wdw.cols.includes(idx[2])) hit = [oi, oj];
        }
        if (hit) {
          await need(out, "tensor", j, [idx[0]]);
          html += `<div class="step" data-step="pool">then the pooling window of ${esc(L.label)} that holds it (output [${idx[0]}, ${hit.join(", ")}]):${poolHtml(j, idx[0], hit[0], hit[1], [idx[1], idx[2]])}</div>`;
        }
        break;
      } else break;
      if (!(await need(outT(j), "tensor", j, [idx[0]]))) break;
      cur = j;
    }
    return html;
  }

  async function linear(i, idx, mine) {
    const L = D.layers[i], k = idx[0], src = L.inputs[0], X = outT(src), Wt = S.w.get(i).weight;
    if (!await need(X, "tensor", src, range(X.shape[0])) || !await need(Wt, "weight", i, [k])) return MISSING;
    const xs = [];
    for (let c = 0; c < X.shape[0]; c++) { const r = X.rows.get(c); for (let q = 0; q < r.length; q++) xs.push(r[q]); }
    const wr = Wt.rows.get(k), bias = S.w.get(i).bias ? S.w.get(i).bias.rows.get(0)[k] : 0;
    let s = 0, absum = Math.abs(bias);
    const prods = xs.map((x, q) => { const p = Math.fround(x * wr[q]); s += p; absum += Math.abs(p); return p; });
    const v = s + bias;
    const top = range(xs.length).sort((a, b) => Math.abs(prods[b]) - Math.abs(prods[a])).slice(0, 12);
    let html = `<div data-op="linear"><p class="eq">output[${k}] = Σ over ${xs.length} inputs of x · w + bias</p>`;
    html += `<table class="grid"><caption>the ${top.length} largest of the ${xs.length} products</caption><tr><td>input</td><td>x</td><td>w</td><td>x·w</td></tr>`
      + top.map((q) => `<tr><td>${q}</td><td>${fmt(xs[q])}</td><td>${fmt(wr[q])}</td><td>${fmt(prods[q])}</td></tr>`).join("") + "</table>";
    html += `<p class="eq">Σ products = ${num(s, "sum")} ; + bias ${num(bias, "bias")} = ${num(v, "total")}</p>`;
    html += `<p class="eq">minicnn's output: ${num(mine, "output")} ${agree(v, mine, absum)}</p></div>`;
    if (i === D.layers.length - 1) html += softmaxHtml(k);
    return html;
  }
  function softmaxHtml(k) {
    const z = S.logits, m = Math.max(...z);
    let tot = 0;
    for (const v of z) tot += Math.exp(v - m);
    const e = Math.exp(z[k] - m), p = e / tot;
    const shown = D.topk.find((t) => t.index === k);
    return `<div class="step" data-op="softmax"><p class="eq">softmax: p[${k}] = exp(z − max z) / Σ exp(z − max z) = exp(${full(z[k])} − ${full(m)}) / ${full(tot)} = ${full(e)} / ${full(tot)} = ${num(p, "prob")}</p>`
      + `<p class="eq">class ${esc(D.labels[k])}${shown ? `; minicnn's probability: ${num(shown.prob, "shown-prob")} ${agree(p, shown.prob)}` : ""}</p></div>`;
  }

  // the kernel sliding over the input, the output filling in behind it, ending at the clicked pixel
  function slide(i, idx) {
    const L = D.layers[i], cfg = L.config, [c, h, w] = idx, X = outT(L.inputs[0]), Y = outT(i);
    const [, Hin, Win] = X.shape, [, H, W] = Y.shape;
    const cg = cfg.in_channels / cfg.groups, g = Math.floor(c / (cfg.out_channels / cfg.groups));
    let ch = g * cg;
    const hint = document.querySelector("#detail .anim .hint");
    if (hint) { const m = hint.textContent.match(/input channel (\d+)/); if (m) ch = Number(m[1]); }
    const ci = document.getElementById("anim-in"), co = document.getElementById("anim-out");
    const si = Math.max(1, Math.floor(160 / Win)), so = Math.max(1, Math.floor(160 / W));
    const xr = X.rows.get(ch), yr = Y.rows.get(c), mx = scaleOf({ rows: new Map([[0, xr]]) }), my = scaleOf({ rows: new Map([[0, yr]]) });
    const base = paint(document.createElement("canvas"), Hin, Win, (y, x) => colour(xr[y * Win + x], mx));
    const last = h * W + w, stepN = Math.max(1, Math.ceil((last + 1) / 60));
    let pos = 0;
    const gen = S.anim = (S.anim || 0) + 1;  // a newer click stops this animation
    ci.width = Win * si; ci.height = Hin * si; co.width = W * so; co.height = H * so;
    const a = ci.getContext("2d"), b = co.getContext("2d");
    a.imageSmoothingEnabled = false; b.imageSmoothingEnabled = false;
    b.fillStyle = "#eee"; b.fillRect(0, 0, co.width, co.height);
    function frame() {
      if (S.anim !== gen || !ci.isConnected) return;
      const end = Math.min(last, pos + stepN - 1);
      for (let p = pos; p <= end; p++) {
        const [r, q] = [Math.floor(p / W), p % W];
        const [cr, cgc, cb] = colour(yr[p], my);
        b.fillStyle = `rgb(${cr},${cgc},${cb})`; b.fillRect(q * so, r * so, so, so);
      }
      pos = end + 1;
      const [r, q] = [Math.floor(end / W), end % W];
      a.drawImage(base, 0, 0, ci.width, ci.height);
      a.strokeStyle = "#e53935"; a.lineWidth = 2;
      const ey = (cfg.kernel_size[0] - 1) * cfg.dilation[0] + 1, ex = (cfg.kernel_size[1] - 1) * cfg.dilation[1] + 1;
      a.strokeRect((q * cfg.stride[1] - cfg.padding[1]) * si, (r * cfg.stride[0] - cfg.padding[0]) * si, ex * si, ey * si);
      b.strokeStyle = "#e53935"; b.strokeRect(q * so, r * so, so, so);
      if (pos <= last) setTimeout(frame, 40);
    }
    frame();
  }

  // -- prediction, Grad-CAM, filters ------------------------------------------------------------------
  function renderPrediction() {
    const ol = document.getElementById("topk");
    ol.innerHTML = "";
    const top = D.topk[0].prob;
    D.topk.forEach((t) => {
      const li = document.createElement("li");
      li.dataset.class = t.index;
      li.innerHTML = `<span class="bar" style="width:${Math.max(1, Math.round(100 * t.prob / top))}px"></span> <span data-role="prob" data-value="${t.prob}">${(100 * t.prob).toFixed(2)}%</span> ${esc(t.label)}`;
      li.addEventListener("click", () => {
        document.getElementById("gradcam-class").value = String(t.index);
        showCam(t.index).catch(report);
        showDetail(D.layers.length - 1, D.layers[D.layers.length - 1].out_shape.length === 3 ? [t.index, 0, 0] : [t.index]).catch(report);
      });
      ol.appendChild(li);
    });
    const p = document.getElementById("prediction");
    p.dataset.top = D.topk[0].index;
    p.dataset.updates = S.updates;
  }
  function renderCamControls() {
    const sel = document.getElementById("gradcam-class");
    sel.innerHTML = "";
    const classes = D.served ? range(D.labels.length) : D.topk.map((t) => t.index);
    for (const k of classes) sel.insertAdjacentHTML("beforeend", `<option value="${k}">${k}: ${esc(D.labels[k])}</option>`);
    sel.value = String(D.topk[0].index);
    sel.onchange = () => showCam(Number(sel.value)).catch(report);
    document.getElementById("gradcam-note").textContent = D.gradcam
      ? `relu(Σ_k mean(dy_class/dA_k) · A_k) at ${D.gradcam.layer}, computed by minicnn's backward pass`
        + (D.served ? "" : "; this file holds the top classes' maps") : "";
  }
  async function showCam(k) {
    const cv = document.getElementById("gradcam");
    const [, H, W] = S.input.shape;
    let map = S.cam.get(k);
    if (!map && D.served) {
      const res = await fetch(`/api/gradcam?class=${k}`);
      if (!res.ok) throw new Error(await res.text());
      map = b64f32((await res.json()).b64);
      S.cam.set(k, map);
    }
    paint(cv, H, W, (y, x) => {
      const [r, g, b] = inputPixel(y, x);
      if (!map) return [r, g, b];
      const t = map[y * W + x];
      const heat = [255 * Math.min(1, 2 * t), 255 * Math.max(0, Math.min(1, 2 * t - 0.5)), 255 * Math.max(0, 1 - 2 * t) * 0.3];
      const al = 0.55 * t + 0.15;
      return [r * (1 - al) + heat[0] * al, g * (1 - al) + heat[1] * al, b * (1 - al) + heat[2] * al].map(Math.round);
    });
    cv.dataset.class = k;
  }
  function renderFilters() {
    const box = document.getElementById("filters");
    box.innerHTML = "";
    const i = D.first_conv;
    if (i === null || i === undefined) return;
    const Wt = S.w.get(i).weight, [, Cin, kh, kw] = Wt.shape;
    box.dataset.layer = D.layers[i].name;
    for (const [o, row] of Array.from(Wt.rows.entries()).sort((a, b) => a[0] - b[0])) {
      let m = 0;
      for (const v of row) m = Math.max(m, Math.abs(v));
      m = m || 1;
      const cv = document.createElement("canvas");
      cv.title = `${D.layers[i].label} filter ${o}`;
      paint(cv, kh, kw, (y, x) => {
        if (Cin === 3) return [0, 1, 2].map((c) => Math.round(255 * (0.5 + 0.5 * row[(c * kh + y) * kw + x] / m)));
        return colour(row[y * kw + x], m);
      });
      box.appendChild(cv);
    }
    document.getElementById("filters-note").textContent = `${Wt.rows.size} filters of layer ${D.layers[i].label} (${Cin}×${kh}×${kw} each), each scaled to its own largest weight`
      + (Wt.rows.size < Wt.shape[0] ? ` (${Wt.rows.size} of ${Wt.shape[0]} in this file)` : "");
  }

  // -- drawing (served digits page) -------------------------------------------------------------------
  function setupDraw() {
    if (!(D.served && D.model === "digits")) return;
    document.getElementById("draw-panel").hidden = false;
    const cv = document.getElementById("draw"), ctx = cv.getContext("2d");
    ctx.fillStyle = "#000"; ctx.fillRect(0, 0, cv.width, cv.height);
    let down = false, last = null;
    const pos = (ev) => { const r = cv.getBoundingClientRect(); return [(ev.clientX - r.left) * cv.width / r.width, (ev.clientY - r.top) * cv.height / r.height]; };
    cv.addEventListener("pointerdown", (ev) => { down = true; last = pos(ev); cv.setPointerCapture && cv.setPointerCapture(ev.pointerId); });
    cv.addEventListener("pointermove", (ev) => {
      if (!down) return;
      const p = pos(ev);
      ctx.strokeStyle = "#fff"; ctx.lineWidth = 22; ctx.lineCap = "round";
      ctx.beginPath(); ctx.moveTo(last[0], last[1]); ctx.lineTo(p[0], p[1]); ctx.stroke();
      last = p;
    });
    const end = () => { if (!down) return; down = false; recompute().catch(report); };
    cv.addEventListener("pointerup", end);
    cv.addEventListener("pointerleave", end);
    document.getElementById("draw-clear").addEventListener("click", () => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, cv.width, cv.height); });
  }
  async function recompute() {
    const cv = document.getElementById("draw"), n = 64;
    const small = document.createElement("canvas");
    small.width = n; small.height = n;
    const sctx = small.getContext("2d");
    sctx.drawImage(cv, 0, 0, n, n);
    const px = sctx.getImageData(0, 0, n, n).data, ink = [];
    for (let k = 0; k < n * n; k++) ink.push(px[4 * k] / 255);
    const status = document.getElementById("draw-status");
    status.textContent = "running the forward pass…";
    const t0 = performance.now();
    const res = await fetch("/api/forward", { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ ink, h: n, w: n }) });
    if (!res.ok) throw new Error(await res.text());
    const data = await res.json();
    S.updates += 1;
    load(data);
    status.textContent = `minicnn's forward pass and the page update: ${Math.round(performance.now() - t0)} ms`;
  }

  // -- start ------------------------------------------------------------------------------------------
  function report(e) {
    const s = document.getElementById("draw-status");
    if (s) s.textContent = String(e.message || e);
    console.error(e);
  }
  function load(data) {
    D = data;
    S.input = mkTensor(D.input.t);
    S.out = new Map(); S.w = new Map(); S.cam = new Map();
    D.layers.forEach((L, i) => {
      S.out.set(i, mkTensor(L.out));
      const w = {};
      // a 1-D parameter is kept as one row, so rows.get(0)[c] reads element c
      for (const [k, t] of Object.entries(L.weights)) {
        w[k] = t.shape.length === 1 ? { shape: t.shape, rows: new Map([[0, b64f32(t.b64)]]) } : mkTensor(t);
      }
      S.w.set(i, w);
    });
    S.logits = Array.from(b64f32(D.logits.b64));
    if (D.gradcam) for (const [k, t] of Object.entries(D.gradcam.maps)) S.cam.set(Number(k), b64f32(t.b64));
    document.getElementById("model-name").textContent = D.model;
    document.getElementById("model-info").textContent = `weights: ${D.weights} · ${D.total_params.toLocaleString("en")} parameters · ${D.layers.length} layers`
      + (D.served ? " · served: minicnn answers the page's requests" : " · static page");
    const warn = document.getElementById("warning");
    warn.hidden = !D.warning; warn.textContent = D.warning || "";
    renderPrediction();
    renderCamControls();
    renderFilters();
    renderNetwork();
    showCam(D.topk[0].index).catch(report);
    const box = document.getElementById("detail");
    if (box.dataset.index && box.dataset.layer) {
      const i = D.layers.findIndex((L) => L.name === box.dataset.layer);
      if (i >= 0) showDetail(i, box.dataset.index.split(",").map(Number)).catch(report);
    }
  }
  load(JSON.parse(document.getElementById("explain-data").textContent));
  setupDraw();
  // loadMs: from the start of navigation to here (data decoded, every column drawn)
  window.minicnnExplain = { data: () => D, showDetail, ready: true, loadMs: performance.now() };
})();
