// Grouped bar charts in SVG, drawn by hand: one group of bars per label, one bar per series.
// Each chart carries its numbers as a table too (screen readers, copying).

import { h, table, usd } from "./dom.js";

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 480;
const HEIGHT = 200;
const PAD = { left: 56, right: 8, top: 8, bottom: 40 };

function s(tag, attrs = {}, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attrs)) node.setAttribute(name, String(value));
  node.append(...children);
  return node;
}

// rows: [{label, values: [number per series]}]; series: [name per series].
export function barChart(title, series, rows) {
  const values = rows.flatMap((r) => r.values);
  const top = Math.max(0, ...values);
  const bottom = Math.min(0, ...values);
  const span = top - bottom || 1;
  const plotW = WIDTH - PAD.left - PAD.right;
  const plotH = HEIGHT - PAD.top - PAD.bottom;
  const y = (v) => PAD.top + ((top - v) / span) * plotH;
  const group = plotW / Math.max(rows.length, 1);
  const bar = Math.max(1, (group * 0.8) / series.length);
  const svg = s("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, class: "chart", role: "img",
                         "aria-label": `${title}: bar chart; its numbers follow in a table` });
  for (const v of [top, bottom, 0]) {
    svg.append(s("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: y(v), y2: y(v) }),
      s("text", { x: PAD.left - 4, y: y(v) + 4, "text-anchor": "end" }, usd(v)));
  }
  rows.forEach((row, i) => {
    const x0 = PAD.left + i * group + group * 0.1;
    row.values.forEach((v, j) => {
      const rect = s("rect", { x: x0 + j * bar, y: Math.min(y(v), y(0)), width: bar,
                               height: Math.max(Math.abs(y(v) - y(0)), 0.5), class: `s${j}` });
      rect.append(s("title", {}, `${row.label} · ${series[j]}: ${usd(v)}`));
      svg.append(rect);
    });
    if (rows.length <= 16 || i % Math.ceil(rows.length / 16) === 0) {
      const label = row.label.length > 12 ? `${row.label.slice(0, 11)}…` : row.label;
      svg.append(s("text", { x: x0 + (bar * series.length) / 2, y: HEIGHT - PAD.bottom + 14,
                             "text-anchor": "middle" }, label));
    }
  });
  const legend = h("div", { class: "legend", "aria-hidden": "true" },
    series.map((name, j) => h("span", { class: `s${j}` }, name)));
  const numbers = table(title, [["", (r) => r.label],
    ...series.map((name, j) => [`${name}#`, (r) => usd(r.values[j])])], rows);
  return h("figure", {}, h("figcaption", {}, title), svg, legend,
    h("details", {}, h("summary", {}, "Numbers"), numbers));
}
