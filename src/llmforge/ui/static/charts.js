/*
 * Small SVG charts for the workbench, drawn from plain arrays with no library: bars over time (stacked
 * series), lines over time (gaps where a value is null), and intervals (a value with its low..high
 * whiskers around a zero line, for comparing eval runs). Each chart fills its container's width, is
 * redrawn when the container resizes, carries a <title> per bar or point as its tooltip and an
 * aria-label summary. Colours come from CSS classes (`series-0`, `series-error`, ...), not from here.
 */
(function () {
  "use strict";

  const NS = "http://www.w3.org/2000/svg";
  const HEIGHT = 170;
  const M = { top: 10, right: 10, bottom: 24, left: 48 };

  function svgEl(tag, attrs, text) {
    const node = document.createElementNS(NS, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function niceMax(value) {
    if (!(value > 0)) return 1;
    const exp = Math.pow(10, Math.floor(Math.log10(value)));
    for (const step of [1, 2, 2.5, 5, 10]) if (value <= step * exp) return step * exp;
    return 10 * exp;
  }

  const observer =
    typeof ResizeObserver !== "undefined"
      ? new ResizeObserver((entries) => {
          for (const entry of entries) {
            const chart = entry.target.__chart;
            if (chart && Math.abs(entry.contentRect.width - chart.width) > 4) chart.draw();
          }
        })
      : null;

  function frame(container, title, draw) {
    const chart = {
      width: 0,
      draw() {
        const width = Math.max(container.clientWidth || 320, 200);
        chart.width = width;
        const svg = svgEl("svg", {
          viewBox: `0 0 ${width} ${HEIGHT}`,
          width,
          height: HEIGHT,
          role: "img",
          "aria-label": title,
          class: "chart-svg",
        });
        draw(svg, width - M.left - M.right, HEIGHT - M.top - M.bottom);
        container.replaceChildren(svg);
      },
    };
    container.__chart = chart;
    chart.draw();
    if (observer) observer.observe(container);
    return chart;
  }

  function yAxis(svg, plotW, plotH, max, format) {
    for (const f of [0, 0.5, 1]) {
      const y = M.top + plotH - f * plotH;
      svg.append(svgEl("line", { x1: M.left, x2: M.left + plotW, y1: y, y2: y, class: "chart-grid" }));
      svg.append(svgEl("text", { x: M.left - 6, y: y + 4, "text-anchor": "end", class: "chart-tick" }, format(max * f)));
    }
  }

  function xLabels(svg, plotW, plotH, labels, labelFormat) {
    if (!labels.length) return;
    const picks = labels.length > 2 ? [0, Math.floor((labels.length - 1) / 2), labels.length - 1] : labels.map((_, i) => i);
    for (const i of picks) {
      const x = M.left + ((i + 0.5) / labels.length) * plotW;
      const anchor = i === 0 ? "start" : i === labels.length - 1 ? "end" : "middle";
      svg.append(
        svgEl("text", { x: anchor === "start" ? M.left : anchor === "end" ? M.left + plotW : x, y: HEIGHT - 6, "text-anchor": anchor, class: "chart-tick" }, labelFormat(labels[i])),
      );
    }
  }

  /* Stacked bars per label: series = [{name, values, cls}]. */
  function bars(container, { title, labels, series, format = String, labelFormat = String }) {
    return frame(container, title, (svg, plotW, plotH) => {
      const totals = labels.map((_, i) => series.reduce((sum, s) => sum + (s.values[i] || 0), 0));
      const max = niceMax(Math.max(0, ...totals));
      yAxis(svg, plotW, plotH, max, format);
      const step = plotW / Math.max(labels.length, 1);
      const barW = Math.max(1, step * 0.72);
      labels.forEach((label, i) => {
        let base = 0;
        const group = svgEl("g", { class: "chart-bar" });
        const tip = [labelFormat(label)];
        series.forEach((s, k) => {
          const v = s.values[i] || 0;
          tip.push(`${s.name}: ${format(v)}`);
          if (v <= 0) return;
          const h = (v / max) * plotH;
          const y = M.top + plotH - ((base + v) / max) * plotH;
          group.append(svgEl("rect", { x: M.left + i * step + (step - barW) / 2, y, width: barW, height: Math.max(h, 0.5), class: s.cls || `series-${k}` }));
          base += v;
        });
        // an invisible full-height target carries the tooltip
        group.append(svgEl("rect", { x: M.left + i * step, y: M.top, width: step, height: plotH, class: "chart-hit" }));
        group.append(svgEl("title", {}, tip.join("\n")));
        svg.append(group);
      });
      xLabels(svg, plotW, plotH, labels, labelFormat);
    });
  }

  /* Lines per series over the labels; null values leave a gap. */
  function lines(container, { title, labels, series, format = String, labelFormat = String }) {
    return frame(container, title, (svg, plotW, plotH) => {
      const all = series.flatMap((s) => s.values.filter((v) => v !== null && v !== undefined));
      const max = niceMax(Math.max(0, ...all));
      yAxis(svg, plotW, plotH, max, format);
      const step = plotW / Math.max(labels.length, 1);
      const xy = (i, v) => [M.left + (i + 0.5) * step, M.top + plotH - (v / max) * plotH];
      const dots = [];
      series.forEach((s, k) => {
        const cls = s.cls || `series-${k}`;
        const segments = [];
        let current = [];
        s.values.forEach((v, i) => {
          if (v === null || v === undefined) {
            if (current.length) segments.push(current);
            current = [];
            return;
          }
          const [x, y] = xy(i, v);
          current.push([x, y]);
          const dot = svgEl("circle", { cx: x, cy: y, r: 2.5, class: `chart-dot ${cls}` });
          dot.append(svgEl("title", {}, `${labelFormat(labels[i])}\n${s.name}: ${format(v)}`));
          dots.push(dot);
        });
        if (current.length) segments.push(current);
        const d = segments
          .map((seg) => seg.map(([x, y], j) => `${j ? "L" : "M"}${x.toFixed(1)},${y.toFixed(1)}`).join(""))
          .join("");
        if (d) svg.append(svgEl("path", { d, class: `chart-line ${cls}` }));
      });
      svg.append(...dots);
      xLabels(svg, plotW, plotH, labels, labelFormat);
    });
  }

  /* One row per item: a dot at `value` with whiskers low..high, around a vertical zero line. */
  function intervals(container, { title, rows, format = String }) {
    const rowH = 30;
    const labelW = 120;
    return frame(container, title, (svg, plotW) => {
      const full = plotW + M.left + M.right;
      const height = rows.length * rowH + M.top + 24;
      svg.setAttribute("height", height);
      svg.setAttribute("viewBox", `0 0 ${full} ${height}`);
      const left = labelW;
      const width = full - labelW - 16;
      const ends = rows.flatMap((r) => [r.low, r.high, r.value]).filter((v) => v !== null && v !== undefined);
      const extent = Math.max(0.05, ...ends.map(Math.abs));
      const x = (v) => left + width / 2 + (v / extent) * (width / 2) * 0.92;
      const bottom = M.top + rows.length * rowH;
      svg.append(svgEl("line", { x1: x(0), x2: x(0), y1: M.top - 4, y2: bottom, class: "chart-zero" }));
      for (const v of [-extent, 0, extent]) {
        svg.append(svgEl("text", { x: x(v), y: bottom + 16, "text-anchor": "middle", class: "chart-tick" }, format(v)));
      }
      rows.forEach((r, i) => {
        const y = M.top + i * rowH + rowH / 2;
        svg.append(svgEl("text", { x: 4, y: y + 4, class: "chart-label" }, r.label));
        if (r.value === null || r.value === undefined) return;
        const cls = r.significant ? (r.value > 0 ? "series-good" : "series-error") : "series-0";
        const g = svgEl("g", { class: "chart-interval" });
        g.append(svgEl("line", { x1: x(r.low), x2: x(r.high), y1: y, y2: y, class: `chart-whisker ${cls}` }));
        for (const end of [r.low, r.high]) {
          g.append(svgEl("line", { x1: x(end), x2: x(end), y1: y - 6, y2: y + 6, class: `chart-whisker ${cls}` }));
        }
        g.append(svgEl("circle", { cx: x(r.value), cy: y, r: 4.5, class: `chart-dot ${cls}` }));
        g.append(svgEl("title", {}, `${r.label}: ${format(r.value)} [${format(r.low)}, ${format(r.high)}]`));
        svg.append(g);
      });
    });
  }

  window.Forge = window.Forge || {};
  window.Forge.charts = { bars, lines, intervals };
})();
