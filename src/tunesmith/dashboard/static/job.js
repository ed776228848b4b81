"use strict";
// One job: its status and settings, the live loss curve, cancel/pause/resume, the
// fine-tuned model next to its base, the evaluation and data reports, checkpoints, events.
(function () {
  const { api, el, when, statusBadge, fillRows, lossChart, COLOURS, every, sideBySide,
    pageData, TERMINAL } = window.TS;
  const jobId = pageData.job;
  const base = "/v1/fine_tuning/jobs/" + encodeURIComponent(jobId);
  const local = "/jobs/" + encodeURIComponent(jobId);
  let job = null;
  let parent = null;
  let reportShown = false;

  function summary(current) {
    const hyper = current.hyperparameters || {};
    const rows = [
      ["Model", current.model], ["Fine-tuned model", current.fine_tuned_model || "—"],
      ["Method", current.method ? current.method.type : ""],
      ["Epochs", hyper.n_epochs], ["Batch size", hyper.batch_size],
      ["Learning-rate multiplier", hyper.learning_rate_multiplier],
      ["Training file", current.training_file], ["Validation file", current.validation_file || "—"],
      ["Created", when(current.created_at)], ["Finished", when(current.finished_at) || "—"],
      ["Estimated finish", when(current.estimated_finish) || "—"],
      ["Trained tokens", current.trained_tokens === null ? "—" : current.trained_tokens],
      ["Result files", (current.result_files || []).join(", ") || "—"],
      ["tunesmith settings", ((current.tunesmith || {}).overrides || []).join(" ") || "—"],
    ];
    document.getElementById("job-summary").replaceChildren(...rows.flatMap(([name, value]) =>
      [el("dt", { text: name }), el("dd", { text: value === undefined ? "" : String(value) })]));
  }

  function controls(status) {
    const allowed = {
      pause: ["validating_files", "queued", "running"],
      resume: ["paused"],
      cancel: ["validating_files", "queued", "running", "paused"],
    };
    for (const [action, statuses] of Object.entries(allowed)) {
      document.getElementById(action).disabled = !statuses.includes(status);
    }
  }

  async function showJob() {
    job = await api(base);
    document.getElementById("job-title").textContent = job.id;
    document.getElementById("job-status").replaceChildren(statusBadge(job.status));
    document.body.dataset.status = job.status;
    summary(job);
    controls(job.status);
    const error = document.getElementById("job-error");
    error.hidden = !job.error;
    error.textContent = job.error ? `${job.error.param || "error"}: ${job.error.message}` : "";
  }

  async function showCurve() {
    const curve = await api(local + "/curve");
    lossChart(document.getElementById("loss-chart"), [
      { name: "training loss", points: curve.train, colour: COLOURS[0] },
      { name: "validation loss", points: curve.validation, colour: COLOURS[1], dots: true },
    ], { xMax: curve.total_steps || 0, label: "loss by step" });
    const last = curve.train[curve.train.length - 1];
    document.getElementById("loss-note").textContent = last
      ? `step ${last[0]}${curve.total_steps ? " of " + curve.total_steps : ""}: training loss ${last[1].toFixed(4)}`
      : "";
  }

  async function showEvents() {
    const events = await api(base + "/events?limit=200");
    fillRows(document.getElementById("events"), events.data.map((event) =>
      el("tr", { class: "level-" + event.level }, el("td", { text: when(event.created_at) }),
        el("td", { text: event.level }), el("td", { text: event.message }))));
  }

  async function showCheckpoints() {
    const checkpoints = await api(base + "/checkpoints?limit=100");
    const number = (value) => (typeof value === "number" ? value.toFixed(4) : "—");
    fillRows(document.getElementById("checkpoints"), checkpoints.data.map((c) =>
      el("tr", {}, el("td", { text: c.step_number }), el("td", { text: number(c.metrics.train_loss) }),
        el("td", { text: number(c.metrics.valid_loss) }),
        el("td", { class: "mono", text: c.fine_tuned_model_checkpoint }))));
  }

  function reportTable(report) {
    const rows = Object.entries(report).map(([name, value]) => el("tr", {},
      el("th", { text: name }),
      el("td", {}, typeof value === "object" && value !== null
        ? el("pre", { text: JSON.stringify(value, null, 2) }) : String(value))));
    return el("table", { class: "data-report" }, el("tbody", {}, ...rows));
  }

  async function showReports() {
    try {
      const report = await api(local + "/data-report");
      document.getElementById("data-report").replaceChildren(reportTable(report));
    } catch (error) { if (error.status !== 404) throw error; }
    if (reportShown) return;
    const response = await fetch(local + "/report", { credentials: "same-origin" });
    if (response.ok) {
      reportShown = true;
      const frame = document.getElementById("report");
      if (!frame.getAttribute("src")) frame.setAttribute("src", local + "/report");
      frame.hidden = false;
      const link = document.getElementById("report-link");
      link.href = local + "/report";
      link.hidden = false;
      document.getElementById("report-note").hidden = true;
    }
  }

  async function sideReady() {
    if (!job || job.status !== "succeeded" || parent !== null) return;
    const models = await api("/v1/models");
    const card = models.data.find((m) => m.id === job.fine_tuned_model);
    if (!card) return;
    parent = card.parent || job.model;
    document.getElementById("side-note").textContent =
      `${job.fine_tuned_model} and its base ${parent} answer the same prompt (greedy, 64 tokens).`;
    document.getElementById("side-form").hidden = false;
  }

  document.getElementById("side-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const prompt = document.getElementById("side-prompt").value;
    await sideBySide(document.getElementById("side-answers"), [job.fine_tuned_model, parent],
      [{ role: "user", content: prompt }], 64, 0);
  });

  for (const button of document.querySelectorAll("[data-action]")) {
    button.addEventListener("click", async () => {
      const message = document.getElementById("control-message");
      message.textContent = "";
      try {
        await api(base + "/" + button.dataset.action, { method: "POST" });
        message.textContent = button.dataset.action + " requested";
      } catch (error) { message.textContent = error.message; }
      await showJob();
    });
  }

  let finalRounds = 0;
  every(1.5, async () => {
    await showJob();
    await Promise.all([showCurve(), showEvents(), showCheckpoints()]);
    if (TERMINAL.includes(job.status) || job.status === "paused") {
      await showReports();
      await sideReady();
      finalRounds += 1;
      return finalRounds > 1 && job.status !== "paused";
    }
    finalRounds = 0;
    return false;
  });
})();
