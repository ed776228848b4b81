"use strict";
// Upload a file (POST /v1/files) and start a job (POST /v1/fine_tuning/jobs) from a form.
(function () {
  const { api, el, when, fillRows, pageData } = window.TS;

  const modelSelect = document.getElementById("model");
  modelSelect.replaceChildren(...pageData.bases.map((name) => el("option", { value: name, text: name })));

  async function showFiles(selected) {
    const files = await api("/v1/files");
    const training = files.data.filter((f) => f.purpose === "fine-tune");
    fillRows(document.getElementById("files"), training.map((f) => el("tr", { "data-file": f.id },
      el("td", { class: "mono", text: f.id }), el("td", { text: f.filename }),
      el("td", { text: f.bytes }), el("td", { class: "mono", text: (f.sha256 || "").slice(0, 12) }),
      el("td", { text: when(f.created_at) }))));
    const options = training.map((f) => el("option", { value: f.id, text: `${f.filename} (${f.id})` }));
    const trainingSelect = document.getElementById("training-file");
    const current = selected || trainingSelect.value;
    trainingSelect.replaceChildren(...options);
    if (current) trainingSelect.value = current;
    const validation = document.getElementById("validation-file");
    const currentValidation = validation.value;
    validation.replaceChildren(el("option", { value: "", text: "none" }),
      ...training.map((f) => el("option", { value: f.id, text: `${f.filename} (${f.id})` })));
    validation.value = currentValidation;
  }

  document.getElementById("upload-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const message = document.getElementById("upload-message");
    const input = document.getElementById("upload-file");
    if (!input.files.length) return;
    const form = new FormData();
    form.append("purpose", "fine-tune");
    form.append("file", input.files[0]);
    message.textContent = "uploading…";
    try {
      const uploaded = await api("/v1/files", { method: "POST", form });
      message.textContent = `uploaded ${uploaded.filename} as ${uploaded.id}`;
      await showFiles(uploaded.id);
    } catch (error) { message.textContent = error.message; }
  });

  function number(id) {
    const text = document.getElementById(id).value.trim();
    if (text === "" || text === "auto") return "auto";
    const value = Number(text);
    if (!Number.isFinite(value)) throw new Error(`${id}: a number or "auto"`);
    return value;
  }

  function body() {
    const type = document.getElementById("method").value;
    const hyper = { n_epochs: number("n-epochs"), batch_size: number("batch-size"),
      learning_rate_multiplier: number("lr-multiplier") };
    if (type === "dpo") hyper.beta = number("beta");
    const request = { model: modelSelect.value, training_file: document.getElementById("training-file").value,
      method: { type, [type]: { hyperparameters: hyper } } };
    const validation = document.getElementById("validation-file").value;
    if (validation) request.validation_file = validation;
    const suffix = document.getElementById("suffix").value.trim();
    if (suffix) request.suffix = suffix;
    const seed = document.getElementById("seed").value.trim();
    if (seed) request.seed = Number(seed);
    const overrides = document.getElementById("overrides").value.split("\n").map((l) => l.trim()).filter(Boolean);
    if (overrides.length) request.tunesmith = { overrides };
    return request;
  }

  document.getElementById("create-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const message = document.getElementById("create-message");
    message.textContent = "";
    try {
      const job = await api("/v1/fine_tuning/jobs", { method: "POST", json: body() });
      window.location.assign("/jobs/" + encodeURIComponent(job.id));
    } catch (error) { message.textContent = error.message; }
  });

  showFiles(null);
})();
