"use strict";
// Counts per interval as grouped bars on a canvas: one colour per rule, crossings (both directions) for
// lines, entries for zones.
function drawChart(canvas, rows, rules, legend) {
  const ctx = canvas.getContext("2d");
  const W = canvas.width, H = canvas.height, pad = { l: 34, r: 8, t: 10, b: 22 };
  ctx.clearRect(0, 0, W, H);
  const ruleIds = rules.map((r) => r.id);
  const starts = [...new Set(rows.map((r) => r.start_ms))].sort((a, b) => a - b).slice(-40);
  const value = (r) => (r.kind === "line" ? r.a_to_b + r.b_to_a : r.enters);
  const table = new Map(starts.map((s) => [s, new Map()]));
  for (const r of rows) if (table.has(r.start_ms)) table.get(r.start_ms).set(r.rule_id, value(r));
  let max = 1;
  for (const m of table.values()) for (const v of m.values()) max = Math.max(max, v);
  ctx.strokeStyle = "#2d333b"; ctx.fillStyle = "#8b949e"; ctx.font = "11px system-ui";
  ctx.beginPath(); ctx.moveTo(pad.l, pad.t); ctx.lineTo(pad.l, H - pad.b); ctx.lineTo(W - pad.r, H - pad.b); ctx.stroke();
  ctx.textAlign = "right"; ctx.fillText(String(max), pad.l - 4, pad.t + 8); ctx.fillText("0", pad.l - 4, H - pad.b);
  const slot = (W - pad.l - pad.r) / Math.max(starts.length, 1);
  const bar = Math.max(1, (slot - 2) / Math.max(ruleIds.length, 1));
  starts.forEach((start, i) => {
    ruleIds.forEach((id, j) => {
      const v = table.get(start).get(id) || 0;
      const h = (H - pad.t - pad.b) * v / max;
      ctx.fillStyle = RULE_COLORS[j % RULE_COLORS.length];
      ctx.fillRect(pad.l + 1 + i * slot + j * bar, H - pad.b - h, bar - 0.5, h);
    });
  });
  ctx.fillStyle = "#8b949e";
  const time = (ms) => new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  if (starts.length) {
    ctx.textAlign = "left"; ctx.fillText(time(starts[0]), pad.l, H - 6);
    ctx.textAlign = "right"; ctx.fillText(time(starts[starts.length - 1]), W - pad.r, H - 6);
  }
  if (legend) {
    legend.replaceChildren(...rules.map((r, j) => el("span", {},
      el("i", { class: "swatch", style: { background: RULE_COLORS[j % RULE_COLORS.length] } }),
      `${r.name} (${r.kind === "line" ? "crossings" : "entries"})`)));
  }
}
