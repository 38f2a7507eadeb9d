/**
 * A self-contained HTML calibration report: per Linear layer, an inline SVG of the histogram
 * of |input| (log-scale counts) with the chosen amax marked, and a summary table of layer,
 * amax, method and how many values lie above the amax (they saturate when quantized).
 * No scripts, no external files, no packages.
 * @module
 */

/** What the report shows for one Linear layer. */
export interface LayerHistogram {
  /** Dotted layer name. */
  name: string;
  /** Bin counts of |x| over `[0, range]` (equal-width bins; may be fractional). */
  counts: ArrayLike<number>;
  /** Upper end of the histogram: the largest |x| seen. */
  range: number;
  /** The amax calibration chose (undefined when the layer never ran). */
  amax?: number;
  /** True when quantization leaves this layer in float (e.g. `lm_head`). */
  excluded?: boolean;
}

/** Options of {@link renderCalibrationReport}. */
export interface ReportOptions {
  /** The calibration method (max, percentile, entropy, mse). */
  method: string;
  /** Shown under the title: model, data, windows. */
  subtitle?: string;
  /** Bars drawn per histogram (default 128; the bins are summed in groups). */
  drawBins?: number;
}

/** Sums consecutive bins so that at most `target` remain (groups of `ceil(n / target)`). */
export function collapseBins(counts: ArrayLike<number>, target: number = 128): number[] {
  const group = Math.max(1, Math.ceil(counts.length / Math.max(1, Math.floor(target))));
  const out: number[] = [];
  for (let i = 0; i < counts.length; i += group) {
    let s = 0;
    for (let j = i; j < Math.min(i + group, counts.length); j++) s += counts[j];
    out.push(s);
  }
  return out;
}

/** Share of the histogram's mass above `amax` (bins are assumed uniform inside). */
export function fractionAbove(counts: ArrayLike<number>, range: number, amax: number): number {
  let total = 0, above = 0;
  const width = range / counts.length;
  for (let k = 0; k < counts.length; k++) {
    const c = counts[k];
    total += c;
    const lo = k * width, hi = lo + width;
    if (lo >= amax) above += c;
    else if (hi > amax && width > 0) above += (c * (hi - amax)) / width;
  }
  return total > 0 ? above / total : 0;
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/** Short number for labels: 4 significant digits, no exponent for ordinary magnitudes. */
function fmt(v: number): string {
  if (v === 0) return "0";
  const a = Math.abs(v);
  return a >= 1e-3 && a < 1e5 ? String(Number(v.toPrecision(4))) : v.toExponential(2);
}

function fmtCount(v: number): string {
  if (v >= 1e6) return `${fmt(v / 1e6)}M`;
  if (v >= 1e3) return `${fmt(v / 1e3)}k`;
  return fmt(Math.round(v));
}

const W = 640, H = 200;
const PAD = { left: 48, right: 16, top: 22, bottom: 34 };

/** One layer's histogram as an SVG element (log10(1 + count) bar heights). */
export function histogramSvg(
  layer: LayerHistogram,
  method: string,
  drawBins: number = 128,
): string {
  const bars = collapseBins(layer.counts, drawBins);
  const plotW = W - PAD.left - PAD.right, plotH = H - PAD.top - PAD.bottom;
  const top = Math.max(...bars, 1);
  const logTop = Math.log10(1 + top);
  const barW = plotW / bars.length;
  const parts: string[] = [];
  parts.push(
    `<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 ${W} ${H}" width="${W}" ` +
      `height="${H}" role="img" aria-label="histogram of |input| of ${escapeHtml(layer.name)}">`,
  );
  parts.push(`<rect x="0" y="0" width="${W}" height="${H}" fill="#fff"/>`);
  const x0 = PAD.left, y0 = PAD.top + plotH;
  bars.forEach((c, i) => {
    if (c <= 0) return;
    const h = (Math.log10(1 + c) / logTop) * plotH;
    parts.push(
      `<rect x="${(x0 + i * barW).toFixed(2)}" y="${(y0 - h).toFixed(2)}" ` +
        `width="${Math.max(barW - 0.5, 0.5).toFixed(2)}" height="${h.toFixed(2)}" fill="#4a78b5"/>`,
    );
  });
  // Axes, ticks at decades of the count and at quarters of the range.
  parts.push(
    `<path d="M${x0} ${PAD.top} V${y0} H${x0 + plotW}" stroke="#333" fill="none"/>`,
  );
  for (let d = 0; d <= Math.floor(logTop); d++) {
    const y = y0 - (Math.log10(1 + 10 ** d) / logTop) * plotH;
    parts.push(
      `<line x1="${x0 - 4}" x2="${x0}" y1="${y.toFixed(2)}" y2="${y.toFixed(2)}" ` +
        `stroke="#333"/>`,
    );
    parts.push(
      `<text x="${x0 - 6}" y="${(y + 4).toFixed(2)}" text-anchor="end" ` +
        `font-size="10">${fmtCount(10 ** d)}</text>`,
    );
  }
  for (let q = 0; q <= 4; q++) {
    const x = x0 + (q / 4) * plotW;
    parts.push(`<line x1="${x}" x2="${x}" y1="${y0}" y2="${y0 + 4}" stroke="#333"/>`);
    parts.push(
      `<text x="${x}" y="${y0 + 15}" text-anchor="middle" font-size="10">` +
        `${fmt((q / 4) * layer.range)}</text>`,
    );
  }
  parts.push(
    `<text x="${x0 + plotW / 2}" y="${H - 4}" text-anchor="middle" font-size="11">` +
      `|x| (input of ${escapeHtml(layer.name)})</text>`,
  );
  parts.push(
    `<text x="12" y="${PAD.top + plotH / 2}" text-anchor="middle" font-size="11" ` +
      `transform="rotate(-90 12 ${PAD.top + plotH / 2})">count (log)</text>`,
  );
  if (layer.amax !== undefined && layer.range > 0) {
    const beyond = layer.amax > layer.range;
    const x = x0 + Math.min(layer.amax / layer.range, 1) * plotW;
    const label = `amax ${fmt(layer.amax)} (${method})${beyond ? " beyond the data" : ""}`;
    const anchor = x > x0 + plotW * 0.7 ? "end" : "start";
    const dx = anchor === "end" ? -4 : 4;
    parts.push(
      `<line x1="${x.toFixed(2)}" x2="${x.toFixed(2)}" y1="${PAD.top - 6}" ` +
        `y2="${y0}" stroke="#c0392b" stroke-width="2" stroke-dasharray="5 3"/>`,
    );
    parts.push(
      `<text x="${(x + dx).toFixed(2)}" y="${PAD.top + 4}" text-anchor="${anchor}" ` +
        `font-size="11" fill="#c0392b">${escapeHtml(label)}</text>`,
    );
  }
  parts.push("</svg>");
  return parts.join("\n");
}

/** The whole report as one HTML document (inline CSS and SVG only). */
export function renderCalibrationReport(layers: LayerHistogram[], options: ReportOptions): string {
  const method = options.method;
  const rows = layers.map((l) => {
    const total = Array.from(l.counts).reduce((a, b) => a + b, 0);
    const above = l.amax === undefined ? undefined : fractionAbove(l.counts, l.range, l.amax);
    return `<tr><td><a href="#${escapeHtml(l.name)}">${escapeHtml(l.name)}</a></td>` +
      `<td class="num">${l.amax === undefined ? "–" : fmt(l.amax)}</td>` +
      `<td>${escapeHtml(method)}</td><td class="num">${fmt(l.range)}</td>` +
      `<td class="num">${above === undefined ? "–" : `${(above * 100).toFixed(4)}%`}</td>` +
      `<td class="num">${fmtCount(total)}</td>` +
      `<td>${l.excluded ? "float (excluded)" : "quantized"}</td></tr>`;
  });
  const figures = layers.map((l) =>
    `<figure id="${escapeHtml(l.name)}"><figcaption>${escapeHtml(l.name)}` +
    `${l.excluded ? " (left in float)" : ""}</figcaption>\n` +
    histogramSvg(l, method, options.drawBins ?? 128) + "\n</figure>"
  );
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>tensorq calibration report (${escapeHtml(method)})</title>
<style>
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
td, th { border: 1px solid #ccc; padding: 2px 8px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 1.5em 0; }
figcaption { font-weight: 600; margin-bottom: 4px; }
</style>
</head>
<body>
<h1>Calibration report</h1>
<p>Method <b>${escapeHtml(method)}</b>. ${escapeHtml(options.subtitle ?? "")}</p>
<p>Each histogram shows |x| of a Linear layer's input over the calibration data (log-scale
counts); the dashed red line is the amax the method chose: values above it saturate when
the input is quantized.</p>
<table>
<thead><tr><th>layer</th><th>amax</th><th>method</th><th>max |x|</th><th>above amax</th>
<th>values</th><th>mode</th></tr></thead>
<tbody>
${rows.join("\n")}
</tbody>
</table>
${figures.join("\n")}
</body>
</html>
`;
}
