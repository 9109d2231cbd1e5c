// ANSI SGR colours of a log line as DOM nodes (spans with classes).
// Rules: each line starts with the default style (lines are rendered apart,
// out of order when older pages load); only SGR (`ESC [ ... m`) is rendered,
// other escape sequences (cursor moves, titles) are dropped; text goes in
// through text nodes only. 256-colour and RGB values are set through CSSOM.

const ESCAPES = /\x1b\[([0-9;:]*)([A-Za-z])|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]/g;
const PALETTE = [
  [0, 0, 0], [205, 49, 49], [13, 188, 121], [229, 229, 16], [36, 114, 200], [188, 63, 188],
  [17, 168, 205], [229, 229, 229], [102, 102, 102], [241, 76, 76], [35, 209, 139],
  [245, 245, 67], [59, 142, 234], [214, 112, 214], [41, 184, 219], [255, 255, 255],
];

function color256(n) {
  if (n < 16) return PALETTE[n];
  if (n < 232) {
    const v = [Math.floor((n - 16) / 36), Math.floor((n - 16) / 6) % 6, (n - 16) % 6];
    return v.map((c) => (c ? 55 + c * 40 : 0));
  }
  const g = 8 + (n - 232) * 10;
  return [g, g, g];
}

const rgb = (c) => `rgb(${c[0]},${c[1]},${c[2]})`;

function apply(style, codes) {
  for (let i = 0; i < codes.length; i++) {
    const c = codes[i];
    if (c === 0) { style.fg = style.bg = null; style.bold = style.dim = style.italic = style.under = false; }
    else if (c === 1) style.bold = true;
    else if (c === 2) style.dim = true;
    else if (c === 3) style.italic = true;
    else if (c === 4) style.under = true;
    else if (c === 22) style.bold = style.dim = false;
    else if (c === 23) style.italic = false;
    else if (c === 24) style.under = false;
    else if (c >= 30 && c <= 37) style.fg = PALETTE[c - 30];
    else if (c >= 90 && c <= 97) style.fg = PALETTE[c - 90 + 8];
    else if (c === 39) style.fg = null;
    else if (c >= 40 && c <= 47) style.bg = PALETTE[c - 40];
    else if (c >= 100 && c <= 107) style.bg = PALETTE[c - 100 + 8];
    else if (c === 49) style.bg = null;
    else if (c === 38 || c === 48) {
      let value = null;
      if (codes[i + 1] === 5 && i + 2 < codes.length) { value = color256(codes[i + 2] & 255); i += 2; }
      else if (codes[i + 1] === 2 && i + 4 < codes.length) {
        value = codes.slice(i + 2, i + 5).map((v) => v & 255); i += 4;
      }
      if (c === 38) style.fg = value; else style.bg = value;
    }
  }
}

function span(text, style) {
  const node = document.createElement("span");
  node.textContent = text;
  const classes = [];
  if (style.bold) classes.push("b");
  if (style.dim) classes.push("d");
  if (style.italic) classes.push("i");
  if (style.under) classes.push("u");
  node.className = classes.join(" ");
  if (style.fg) node.style.color = rgb(style.fg);
  if (style.bg) node.style.backgroundColor = rgb(style.bg);
  return node;
}

// Append `line` to `parent`: plain text when it has no escapes (the common case).
export function renderAnsi(parent, line) {
  if (!line.includes("\x1b")) {
    parent.append(line);
    return;
  }
  const style = {fg: null, bg: null, bold: false, dim: false, italic: false, under: false};
  let last = 0;
  ESCAPES.lastIndex = 0;
  for (let m = ESCAPES.exec(line); m !== null; m = ESCAPES.exec(line)) {
    if (m.index > last) parent.append(plain(style) ? line.slice(last, m.index) :
                                      span(line.slice(last, m.index), style));
    if (m[2] === "m") apply(style, (m[1] || "0").split(/[;:]/).map((v) => Number(v) || 0));
    last = ESCAPES.lastIndex;
  }
  if (last < line.length) parent.append(plain(style) ? line.slice(last) : span(line.slice(last), style));
}

function plain(style) {
  return !style.fg && !style.bg && !style.bold && !style.dim && !style.italic && !style.under;
}
