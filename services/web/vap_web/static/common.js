"use strict";
// Shared by the pages: JSON fetches that send the user to the login page when the token is refused,
// DOM building without innerHTML (names come from the API), stable colours per track id.

async function fetchJson(url) {
  const response = await fetch(url, { credentials: "same-origin", cache: "no-store" });
  if (response.status === 401) {
    location.href = "/login?next=" + encodeURIComponent(location.pathname);
    throw new Error("not logged in");
  }
  if (!response.ok) {
    let message = response.statusText;
    try { message = (await response.json()).error || message; } catch (e) { /* not JSON */ }
    throw new Error(`${url}: ${response.status} ${message}`);
  }
  return response.json();
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "class") node.className = value;
    else if (key === "style") Object.assign(node.style, value);
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

// Golden-angle hues: neighbouring ids get far-apart colours, and an id always gets the same one.
function colorFor(id, alpha = 1) {
  if (id === null || id === undefined) return `hsla(0, 0%, 80%, ${alpha})`;
  return `hsla(${(id * 137.508) % 360}, 85%, 58%, ${alpha})`;
}

// Rule colours: fixed by position in the rule list.
const RULE_COLORS = ["#4fb3ff", "#f778ba", "#ffa657", "#7ee787", "#d2a8ff", "#79c0ff", "#ff7b72"];

function countsText(rule, figures) {
  if (!figures) return "–";
  if (rule && rule.kind === "line") {
    const [a, b] = rule.labels || ["a_to_b", "b_to_a"];
    return `${a} ${figures.a_to_b ?? figures[0] ?? 0} · ${b} ${figures.b_to_a ?? figures[1] ?? 0}`;
  }
  if (figures.enters !== undefined) return `enters ${figures.enters} · exits ${figures.exits}`;
  return `occupancy ${figures}`;
}
