"use strict";
// Runs side by side: the loss curves of the ticked jobs on one chart, their settings and results.
(function () {
  const { api, el, statusBadge, lossChart, COLOURS, params } = window.TS;
  const chosen = new Set((params().get("jobs") || "").split(",").filter(Boolean));

  async function draw(jobs, models) {
    const picked = jobs.filter((job) => chosen.has(job.id));
    const curves = await Promise.all(picked.map((job) => api("/jobs/" + encodeURIComponent(job.id) + "/curve")));
    lossChart(document.getElementById("compare-chart"), picked.map((job, i) => ({
      name: (job.suffix ? job.suffix + " · " : "") + job.id, points: curves[i].train, colour: COLOURS[i % COLOURS.length],
    })), { empty: "Tick jobs above to compare them", label: "training loss by step" });
    const table = document.getElementById("compare-table");
    const evaluation = (job) => {
      const card = models.find((m) => m.id === job.fine_tuned_model);
      const score = card && card.evaluation;
      return score ? `${score.metric} ${Number(score.fine_tuned).toFixed(3)}` : "—";
    };
    const rows = [
      ["Status", (job) => statusBadge(job.status)], ["Model", (job) => job.model],
      ["Method", (job) => job.method.type],
      ["Epochs", (job) => job.hyperparameters.n_epochs], ["Batch size", (job) => job.hyperparameters.batch_size],
      ["LR multiplier", (job) => job.hyperparameters.learning_rate_multiplier],
      ["tunesmith settings", (job) => ((job.tunesmith || {}).overrides || []).join(" ")],
      ["Final training loss", (job, i) => { const t = curves[i].train; return t.length ? t[t.length - 1][1].toFixed(4) : "—"; }],
      ["Best validation loss", (job, i) => { const v = curves[i].validation.map((p) => p[1]); return v.length ? Math.min(...v).toFixed(4) : "—"; }],
      ["Trained tokens", (job) => job.trained_tokens ?? "—"],
      ["Evaluation", evaluation],
      ["Fine-tuned model", (job) => job.fine_tuned_model || "—"],
    ];
    table.tHead.replaceChildren(el("tr", {}, el("th", {}), ...picked.map((job) => el("th", { text: job.id }))));
    table.tBodies[0].replaceChildren(...rows.map(([name, cell]) => el("tr", {}, el("th", { text: name }),
      ...picked.map((job, i) => { const value = cell(job, i); return el("td", {}, value instanceof Node ? value : String(value)); }))));
  }

  async function start() {
    const jobs = (await api("/v1/fine_tuning/jobs?limit=100")).data;
    const models = (await api("/v1/models")).data;
    const box = document.getElementById("choices");
    box.replaceChildren(...jobs.map((job) => {
      const input = el("input", { type: "checkbox", value: job.id, checked: chosen.has(job.id) });
      input.addEventListener("change", () => {
        if (input.checked) chosen.add(job.id); else chosen.delete(job.id);
        const url = new URL(window.location.href);
        url.searchParams.set("jobs", [...chosen].join(","));
        window.history.replaceState(null, "", url);
        draw(jobs, models);
      });
      return el("label", { class: "choice" }, input, ` ${job.id} `, statusBadge(job.status), job.suffix ? ` ${job.suffix}` : "");
    }));
    await draw(jobs, models);
  }
  start();
})();
