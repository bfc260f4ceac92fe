"use strict";
// One camera live: frames with their tracks over a WebSocket (binary: 4-byte header length, JSON header,
// JPEG), lines and zones from /api/cameras/<id>, running counts and events as JSON texts, and the chart of
// counts per interval from /api/cameras/<id>/counts.
(() => {
  const sid = decodeURIComponent(location.pathname.split("/").pop());
  const view = document.getElementById("view");
  const ctx = view.getContext("2d");
  const tracksList = document.getElementById("tracks");
  const countsBody = document.querySelector("#counts tbody");
  const eventsList = document.getElementById("events");
  const stateBadge = document.getElementById("state");
  const frameInfo = document.getElementById("frame-info");
  let camera = { rules: [] };
  let running = { lines: {}, zones: {} };
  let frames = 0;
  let drawing = false;
  const CHART_INTERVALS = 40;

  // Labels keep their size on screen whatever the frame size.
  const fontSize = () => Math.max(12, Math.round(view.width / 64));

  function point(rule, p, header, sx, sy) {
    return rule.normalized ? [p[0] * view.width, p[1] * view.height] : [p[0] * sx, p[1] * sy];
  }

  function drawRules(header, sx, sy) {
    camera.rules.forEach((rule, j) => {
      if (rule.disabled) return;
      const color = RULE_COLORS[j % RULE_COLORS.length];
      const pts = rule.points.map((p) => point(rule, p, header, sx, sy));
      ctx.lineWidth = 3; ctx.strokeStyle = color; ctx.setLineDash(rule.kind === "line" ? [] : [8, 5]);
      ctx.beginPath(); pts.forEach(([x, y], i) => (i ? ctx.lineTo(x, y) : ctx.moveTo(x, y)));
      if (rule.kind === "zone") { ctx.closePath(); ctx.fillStyle = color + "22"; ctx.fill(); }
      ctx.stroke(); ctx.setLineDash([]);
      if (rule.kind === "line") drawSides(rule, pts, color);
      const [x, y] = pts[0];
      const figures = rule.kind === "line" ? running.lines[rule.id] : running.zones[rule.id];
      const label = `${rule.name}: ${rule.kind === "line" ? countsText(rule, figures || [0, 0]) : "occupancy " + (figures ?? 0)}`;
      const size = fontSize();
      ctx.font = `bold ${size}px system-ui`; const w = ctx.measureText(label).width;
      ctx.fillStyle = "rgba(0,0,0,.6)"; ctx.fillRect(x + 4, y + 4, w + 8, size + 6);
      ctx.fillStyle = color; ctx.fillText(label, x + 8, y + size + 4);
    });
  }

  // Marks side A and side B of a line at its middle, each with an arrow across the line and the name of a
  // crossing that way (analytics.proto: side B is the right of p1 -> p2 on screen, y down), so what a
  // count means can be read off the picture.
  function drawSides(rule, pts, color) {
    const [[x1, y1], [x2, y2]] = pts;
    const len = Math.hypot(x2 - x1, y2 - y1) || 1;
    const [ux, uy] = [(x2 - x1) / len, (y2 - y1) / len];
    const [nx, ny] = [-uy, ux]; // towards side B
    const [mx, my] = [(x1 + x2) / 2, (y1 + y2) / 2];
    const size = fontSize(), arrow = size * 3;
    ctx.font = `bold ${size}px system-ui`;
    for (const [sign, side, label] of [[1, "A", rule.labels[0]], [-1, "B", rule.labels[1]]]) {
      // Side by side along the line, one arrow per direction: from this side across to the other.
      const [ox, oy] = [ux * size * 1.4 * sign, uy * size * 1.4 * sign];
      const [sx0, sy0] = [mx + ox - sign * nx * arrow, my + oy - sign * ny * arrow];
      const [ex, ey] = [mx + ox + sign * nx * arrow * 0.5, my + oy + sign * ny * arrow * 0.5];
      ctx.strokeStyle = color; ctx.fillStyle = color; ctx.lineWidth = 2;
      ctx.beginPath(); ctx.moveTo(sx0, sy0); ctx.lineTo(ex, ey); ctx.stroke();
      const ang = Math.atan2(ey - sy0, ex - sx0), head = size * 0.7;
      ctx.beginPath(); ctx.moveTo(ex, ey);
      ctx.lineTo(ex - head * Math.cos(ang - 0.45), ey - head * Math.sin(ang - 0.45));
      ctx.lineTo(ex - head * Math.cos(ang + 0.45), ey - head * Math.sin(ang + 0.45));
      ctx.closePath(); ctx.fill();
      // The name sits behind the arrow's tail, on the side the crossing starts from.
      const text = `${side}: ${label}`;
      const w = ctx.measureText(text).width;
      const back = 4 + Math.abs(nx) * w / 2 + Math.abs(ny) * size / 2;
      const [cx, cy] = [sx0 - sign * nx * back, sy0 - sign * ny * back];
      ctx.fillStyle = "rgba(0,0,0,.6)"; ctx.fillRect(cx - w / 2 - 3, cy - size / 2 - 3, w + 6, size + 6);
      ctx.fillStyle = color; ctx.fillText(text, cx - w / 2, cy + size / 2 - 2);
    }
  }

  function drawTracks(tracks, sx, sy) {
    const size = fontSize();
    ctx.font = `bold ${size}px system-ui`;
    for (const t of tracks) {
      const [x1, y1, x2, y2] = [t.box[0] * sx, t.box[1] * sy, t.box[2] * sx, t.box[3] * sy];
      ctx.lineWidth = 2.5; ctx.strokeStyle = colorFor(t.id); ctx.strokeRect(x1, y1, x2 - x1, y2 - y1);
      const label = t.id === null ? `${t.cls} ${t.conf.toFixed(2)}` : `#${t.id} ${t.cls}`;
      const w = ctx.measureText(label).width;
      ctx.fillStyle = colorFor(t.id); ctx.fillRect(x1, y1 - size - 5, w + 8, size + 5);
      ctx.fillStyle = "#000"; ctx.fillText(label, x1 + 4, y1 - 4);
    }
  }

  function listTracks(tracks) {
    const tracked = tracks.filter((t) => t.id !== null);
    document.getElementById("track-count").textContent = `(${tracked.length})`;
    tracksList.replaceChildren(...tracked.map((t) => el("li", { "data-track": t.id },
      el("i", { class: "swatch", style: { background: colorFor(t.id) } }),
      `#${t.id} ${t.cls} ${(t.conf * 100).toFixed(0)}%`, t.global_id ? el("span", { class: "dim" }, ` global ${t.global_id}`) : null,
      ...Object.entries(t.attrs).filter(([, v]) => v !== "unknown").map(([k, v]) => el("span", { class: "dim" }, ` ${k} ${v}`)))));
  }

  function renderCounts() {
    countsBody.replaceChildren(...camera.rules.map((rule) => {
      const figures = rule.kind === "line" ? running.lines[rule.id] : running.zones[rule.id];
      const text = rule.kind === "line" ? countsText(rule, figures || [0, 0]) : `occupancy ${figures ?? 0}`;
      return el("tr", { "data-rule": rule.id }, el("td", {}, rule.name), el("td", {}, rule.kind), el("td", {}, text));
    }));
  }

  async function onFrame(buffer) {
    if (drawing) return; // still drawing the previous one: skip, the next is on its way
    drawing = true;
    try {
      const size = new DataView(buffer).getUint32(0);
      const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, size)));
      const bitmap = await createImageBitmap(new Blob([new Uint8Array(buffer, 4 + size)], { type: "image/jpeg" }));
      if (view.width !== bitmap.width || view.height !== bitmap.height) { view.width = bitmap.width; view.height = bitmap.height; }
      ctx.drawImage(bitmap, 0, 0);
      bitmap.close();
      const sx = view.width / (header.width || view.width), sy = view.height / (header.height || view.height);
      drawRules(header, sx, sy);
      drawTracks(header.tracks, sx, sy);
      listTracks(header.tracks);
      frames += 1;
      view.dataset.frames = String(frames);
      view.dataset.seq = String(header.seq);
      const age = Date.now() - header.capture_ms;
      frameInfo.textContent = `frame ${header.seq} · ${header.tracks.length} object(s) · ${age} ms behind capture` +
        (header.raw ? " · no tracking results (raw frame)" : header.exact ? "" : " · boxes of a slightly older frame");
    } finally {
      drawing = false;
    }
  }

  function onText(message) {
    if (message.type === "counts") {
      running = message;
      renderCounts();
    } else if (message.type === "notice") {
      frameInfo.textContent = message.message;
    } else if (message.type === "event") {
      const time = new Date(message.time_ms).toLocaleTimeString();
      const what = message.kind === "line_crossing" ? `crossed ${message.rule_name} (${message.label})` : `${message.kind.replace("_", " ")} ${message.rule_name}`;
      eventsList.prepend(el("li", {}, el("span", { class: "dim" }, time), ` #${message.track_id} ${message.cls} ${what}`));
      while (eventsList.children.length > 50) eventsList.lastChild.remove();
    }
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const ws = new WebSocket(`${scheme}://${location.host}/api/cameras/${encodeURIComponent(sid)}/live`);
    ws.binaryType = "arraybuffer";
    ws.onopen = () => { stateBadge.textContent = "live"; stateBadge.className = "badge state-STREAMING"; };
    ws.onmessage = (event) => (typeof event.data === "string" ? onText(JSON.parse(event.data)) : onFrame(event.data));
    ws.onclose = (event) => {
      if (event.code === 4401) {  // the control API no longer accepts our token
        location.href = "/login?next=" + encodeURIComponent(location.pathname);
        return;
      }
      stateBadge.textContent = "disconnected"; stateBadge.className = "badge state-FAILED";
      setTimeout(connect, 2000);
    };
  }

  async function refreshCamera() {
    try {
      camera = await fetchJson(`/api/cameras/${encodeURIComponent(sid)}`);
      document.getElementById("name").textContent = camera.name;
      document.title = `VAP — ${camera.name}`;
      document.getElementById("info").textContent =
        `${camera.state} · ${camera.decode_fps.toFixed(1)} fps · ${camera.model || "default model"} · ${camera.source}`;
      renderCounts();
    } catch (e) {
      frameInfo.textContent = String(e.message || e);
    }
  }

  async function refreshChart() {
    try {
      // The last CHART_INTERVALS intervals: the interval is the scenario's (60 s unless configured).
      const minutes = Math.min(7 * 24 * 60, Math.max(1, CHART_INTERVALS * (camera.count_interval_s || 60) / 60));
      const data = await fetchJson(`/api/cameras/${encodeURIComponent(sid)}/counts?minutes=${minutes}`);
      drawChart(document.getElementById("chart"), data.counts, camera.rules, document.getElementById("legend"));
      document.getElementById("chart-info").textContent = `(per ${data.interval_s} s, last ${CHART_INTERVALS})`;
    } catch (e) { /* shown on the next refresh */ }
  }

  refreshCamera().then(() => { connect(); refreshChart(); });
  setInterval(refreshCamera, 10000);
  setInterval(refreshChart, 10000);
})();
