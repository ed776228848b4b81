"use strict";
// Shared by every page: same-origin calls with the session cookie and the CSRF header,
// safe DOM building (text, never HTML from data), times, and the SVG loss chart.
(function () {
  const meta = document.querySelector('meta[name="csrf-token"]');
  const csrf = meta ? meta.content : "";
  const pageData = JSON.parse(document.body.dataset.pageData || "{}");
  const TERMINAL = ["succeeded", "failed", "cancelled"];

  async function api(path, options) {
    const opts = options || {};
    const headers = { "X-CSRF-Token": csrf };
    let body;
    if (opts.json !== undefined) {
      headers["Content-Type"] = "application/json";
      body = JSON.stringify(opts.json);
    } else if (opts.form !== undefined) {
      body = opts.form;
    }
    const response = await fetch(path, {
      method: opts.method || "GET", headers, body, credentials: "same-origin",
    });
    if (response.redirected && new URL(response.url).pathname === "/login") {
      window.location.assign("/login");
      throw new Error("logged out");
    }
    const text = await response.text();
    let data = null;
    try { data = JSON.parse(text); } catch (_) { data = null; }
    if (!response.ok) {
      const message = data && data.error ? data.error.message : response.status + " " + text;
      const error = new Error(message);
      error.status = response.status;
      throw error;
    }
    return data;
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "class") node.className = value;
      else if (name === "text") node.textContent = value;
      else node.setAttribute(name, value === true ? "" : value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function when(seconds) {
    if (!seconds) return "";
    return new Date(seconds * 1000).toLocaleString();
  }

  function statusBadge(status) {
    return el("span", { class: "status status-" + status, text: status });
  }

  function fillRows(table, rows) {
    const body = table.tBodies[0];
    body.replaceChildren(...rows);
  }

  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, value);
    return node;
  }

  // series: [{name, points: [[x, y], ...], colour}]; draws axes, ticks, lines and a legend.
  function lossChart(container, series, options) {
    const opts = options || {};
    const width = 720, height = 280, left = 56, right = 16, top = 16, bottom = 36;
    const all = series.flatMap((s) => s.points);
    const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img",
      "aria-label": opts.label || "loss curve", class: "loss" });
    if (all.length === 0) {
      const text = svg("text", { x: width / 2, y: height / 2, "text-anchor": "middle", class: "axis" });
      text.textContent = opts.empty || "No loss logged yet";
      root.append(text);
      container.replaceChildren(root);
      return root;
    }
    const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
    const xMin = Math.min(...xs), xMax = Math.max(opts.xMax || 0, ...xs);
    let yMin = Math.min(...ys), yMax = Math.max(...ys);
    if (yMax === yMin) { yMax += 0.5; yMin -= 0.5; }
    const sx = (x) => left + (xMax === xMin ? 0.5 : (x - xMin) / (xMax - xMin)) * (width - left - right);
    const sy = (y) => top + (1 - (y - yMin) / (yMax - yMin)) * (height - top - bottom);
    root.append(svg("line", { x1: left, y1: height - bottom, x2: width - right, y2: height - bottom, class: "axis-line" }));
    root.append(svg("line", { x1: left, y1: top, x2: left, y2: height - bottom, class: "axis-line" }));
    for (let i = 0; i <= 4; i++) {
      const y = yMin + (i / 4) * (yMax - yMin);
      const label = svg("text", { x: left - 6, y: sy(y) + 4, "text-anchor": "end", class: "axis" });
      label.textContent = y.toFixed(3);
      root.append(label, svg("line", { x1: left, y1: sy(y), x2: width - right, y2: sy(y), class: "grid" }));
      const x = Math.round(xMin + (i / 4) * (xMax - xMin));
      const xl = svg("text", { x: sx(x), y: height - bottom + 16, "text-anchor": "middle", class: "axis" });
      xl.textContent = String(x);
      root.append(xl);
    }
    const stepLabel = svg("text", { x: width - right, y: height - 4, "text-anchor": "end", class: "axis" });
    stepLabel.textContent = "step";
    root.append(stepLabel);
    series.forEach((s, index) => {
      if (s.points.length === 0) return;
      const d = s.points.map((p, i) => `${i ? "L" : "M"}${sx(p[0]).toFixed(1)},${sy(p[1]).toFixed(1)}`).join(" ");
      root.append(svg("path", { d, fill: "none", stroke: s.colour, "stroke-width": 2, class: "series", "data-series": s.name }));
      if (s.points.length === 1 || s.dots) {
        for (const p of s.points) root.append(svg("circle", { cx: sx(p[0]), cy: sy(p[1]), r: 3, fill: s.colour }));
      }
      const legend = svg("text", { x: left + 10, y: top + 14 + index * 16, fill: s.colour, class: "legend" });
      legend.textContent = s.name;
      root.append(legend);
    });
    container.replaceChildren(root);
    return root;
  }

  const COLOURS = ["#0969da", "#bf8700", "#1a7f37", "#8250df", "#cf222e", "#57606a"];

  function params() { return new URLSearchParams(window.location.search); }

  // Poll fn every `seconds` until it returns true (the job is done); errors are shown, not fatal.
  function every(seconds, fn) {
    let stopped = false;
    async function tick() {
      if (stopped) return;
      let done = false;
      try { done = await fn(); } catch (error) { console.error(error); }
      if (!done) setTimeout(tick, seconds * 1000);
    }
    tick();
    return () => { stopped = true; };
  }

  async function chat(model, messages, maxTokens, temperature) {
    const started = performance.now();
    const answer = await api("/v1/chat/completions", { method: "POST", json: {
      model, messages, max_tokens: maxTokens, temperature,
    } });
    return { answer, seconds: (performance.now() - started) / 1000 };
  }

  function answerCard(model, result, error) {
    const card = el("article", { class: "card answer", "data-model": model });
    card.append(el("h3", { text: model }));
    if (error) {
      card.append(el("p", { class: "error", text: error.message }));
      return card;
    }
    const choice = result.answer.choices[0];
    card.append(el("p", { class: "answer-text", text: choice.message.content }));
    card.append(el("p", { class: "muted", text:
      `${result.answer.usage.completion_tokens} tokens · ${result.seconds.toFixed(2)} s · ` +
      `finish: ${choice.finish_reason} · ${result.answer.system_fingerprint || ""}` }));
    return card;
  }

  // Ask every model of `models` the same messages at once; cards appear in `container`.
  async function sideBySide(container, models, messages, maxTokens, temperature) {
    container.replaceChildren(...models.map((m) => answerCard(m, null, { message: "…" })));
    await Promise.all(models.map(async (model, index) => {
      let card;
      try { card = answerCard(model, await chat(model, messages, maxTokens, temperature)); }
      catch (error) { card = answerCard(model, null, error); }
      container.children[index].replaceWith(card);
    }));
  }

  const logout = document.getElementById("logout");
  if (logout) {
    logout.addEventListener("click", async () => {
      try { await api("/logout", { method: "POST" }); } finally { window.location.assign("/login"); }
    });
  }

  window.TS = { api, el, when, statusBadge, fillRows, lossChart, COLOURS, params, every,
    sideBySide, pageData, TERMINAL };
})();
