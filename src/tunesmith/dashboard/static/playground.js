"use strict";
// Send one conversation to two models through /v1/chat/completions and show both answers.
(function () {
  const { api, el, params, sideBySide } = window.TS;

  async function models() {
    const served = await api("/v1/models");
    const ids = served.data.map((m) => m.id);
    const query = params();
    const fineTuned = served.data.filter((m) => m.parent).map((m) => m.id);
    const first = query.get("a") || fineTuned[0] || ids[0] || "";
    const firstCard = served.data.find((m) => m.id === first);
    const second = query.get("b") || (firstCard && firstCard.parent) || "";
    for (const [id, value] of [["model-a", first], ["model-b", second]]) {
      const select = document.getElementById(id);
      select.replaceChildren(el("option", { value: "", text: "none" }),
        ...ids.map((m) => el("option", { value: m, text: m })));
      select.value = ids.includes(value) ? value : "";
    }
  }

  document.getElementById("chat-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const chosen = ["model-a", "model-b"].map((id) => document.getElementById(id).value).filter(Boolean);
    const message = document.getElementById("chat-message");
    message.textContent = chosen.length ? "" : "choose a model";
    if (!chosen.length) return;
    const messages = [];
    const system = document.getElementById("system").value.trim();
    if (system) messages.push({ role: "system", content: system });
    messages.push({ role: "user", content: document.getElementById("message").value });
    const maxTokens = Number(document.getElementById("max-tokens").value) || 64;
    const temperature = Number(document.getElementById("temperature").value) || 0;
    await sideBySide(document.getElementById("answers"), chosen, messages, maxTokens, temperature);
  });

  models();
})();
