"use strict";
// The camera list, refreshed every 2 s from /api/cameras.
(() => {
  const body = document.querySelector("#cameras tbody");
  const status = document.getElementById("status");

  function row(cam) {
    const counts = (cam.rules || []).map((rule) => {
      const figures = cam.counts ? cam.counts[rule.id] : null;
      return el("div", {}, el("b", {}, rule.name), " ", countsText(rule, figures || (rule.kind === "line" ? { a_to_b: 0, b_to_a: 0 } : { enters: 0, exits: 0 })));
    });
    return el("tr", { "data-camera": cam.camera || cam.name, "data-id": cam.id },
      el("td", {}, el("a", { href: `/camera/${encodeURIComponent(cam.id)}`, class: "camera-link" }, cam.name)),
      el("td", {}, el("span", { class: `badge state-${cam.status}` }, cam.status)),
      el("td", {}, el("span", { class: `badge state-${cam.state}`, title: cam.reason || "" }, cam.state),
        cam.reconnects ? el("span", { class: "dim" }, ` ${cam.reconnects} reconnects`) : null),
      el("td", { class: "num" }, cam.decode_fps.toFixed(1)),
      el("td", { class: "num" }, cam.detection_fps.toFixed(1)),
      el("td", { class: "num" }, cam.latency_p50_ms ? `${cam.latency_p50_ms.toFixed(0)} ms` : "–"),
      el("td", {}, ...(counts.length ? counts : ["–"])),
      el("td", { class: "dim" }, cam.source));
  }

  async function refresh() {
    try {
      const cameras = await fetchJson("/api/cameras");
      body.replaceChildren(...cameras.map(row));
      status.textContent = `${cameras.length} camera(s) · updated ${new Date().toLocaleTimeString()}`;
    } catch (e) {
      status.textContent = String(e.message || e);
    }
  }
  refresh();
  setInterval(refresh, 2000);
})();
