// Building the page from data without parsing markup: every value becomes a text node.

export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else if (name === "class") node.className = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  node.append(...children.flat().filter((c) => c !== null && c !== undefined)
    .map((c) => (c instanceof Node ? c : document.createTextNode(String(c)))));
  return node;
}

// A table in a horizontally scrolling region (phones): columns are [title, cell(row)] pairs,
// a cell being text or a node; numeric columns are named with a trailing "#".
export function table(caption, columns, rows, empty = "Nothing yet.") {
  if (!rows.length) return h("p", { class: "note" }, `${caption}: ${empty}`);
  const numeric = columns.map(([title]) => title.endsWith("#"));
  const head = h("tr", {}, columns.map(([title], i) =>
    h("th", { scope: "col", class: numeric[i] ? "num" : null }, title.replace(/#$/, ""))));
  const body = rows.map((row) => h("tr", {}, columns.map(([, cell], i) =>
    h("td", { class: numeric[i] ? "num" : null }, cell(row)))));
  return h("div", { class: "scroll", role: "region", "aria-label": caption, tabindex: 0 },
    h("table", {}, h("caption", {}, caption), h("thead", {}, head), h("tbody", {}, body)));
}

export function usd(text) {
  if (text === null || text === undefined) return "–";
  const value = Number(text);
  const digits = Math.abs(value) < 1 && value !== 0 ? 4 : 2;
  return `${value < 0 ? "−" : ""}$${Math.abs(value).toFixed(digits)}`;
}

export function seconds(value) {
  return value === null || value === undefined ? "–" : `${Number(value).toFixed(2)} s`;
}

export function when(epoch) {
  const date = new Date(epoch * 1000);
  const today = new Date().toDateString() === date.toDateString();
  return today ? date.toLocaleTimeString() : date.toLocaleString();
}

export function replace(container, ...nodes) {
  container.replaceChildren(...nodes);
}
