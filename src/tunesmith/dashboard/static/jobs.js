"use strict";
// The jobs list and the served models, refreshed every two seconds.
(function () {
  const { api, el, when, statusBadge, fillRows, every } = window.TS;

  async function refresh() {
    const jobs = await api("/v1/fine_tuning/jobs?limit=100");
    fillRows(document.getElementById("jobs"), jobs.data.map((job) => el("tr", { "data-job": job.id },
      el("td", {}, el("a", { href: "/jobs/" + encodeURIComponent(job.id), text: job.id })),
      el("td", { text: job.model }),
      el("td", {}, statusBadge(job.status)),
      el("td", { text: when(job.created_at) }),
      el("td", { text: job.fine_tuned_model || "" }))));
    document.getElementById("no-jobs").hidden = jobs.data.length > 0;
    const models = await api("/v1/models");
    fillRows(document.getElementById("models"), models.data.map((model) => {
      const score = model.evaluation;
      const scoreText = score ? `${score.metric} ${Number(score.fine_tuned).toFixed(3)}` +
        (score.best_baseline !== null && score.best_baseline !== undefined
          ? ` (best baseline ${Number(score.best_baseline).toFixed(3)})` : "") : "";
      return el("tr", {}, el("td", { text: model.id }), el("td", { text: model.parent || "" }),
        el("td", { text: scoreText }), el("td", { class: "muted", text: model.parent ? model.root : "" }));
    }));
    return false;
  }
  every(2, refresh);
})();
