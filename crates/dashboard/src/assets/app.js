// flatpack dashboard: renders the snapshots the server pushes over Server-Sent Events.
// Every value that came from a customer (ids, e-mail, order details) goes in as text
// (textContent / createTextNode), never as HTML.
"use strict";

const SVG = "http://www.w3.org/2000/svg";

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function setText(id, text) {
  const node = document.getElementById(id);
  if (node) node.textContent = String(text);
}

function clock(epochSeconds) {
  return new Date(epochSeconds * 1000).toISOString().slice(11, 19);
}

function seconds(value) {
  if (value === null || value === undefined) return "—";
  return value < 10 ? value.toFixed(2) + " s" : value.toFixed(1) + " s";
}

function detailsText(details) {
  return Object.entries(details || {})
    .map(([key, value]) => key + ": " + (typeof value === "string" ? value : JSON.stringify(value)))
    .join(", ");
}

function step(label, state, title) {
  const node = el("span", "step " + state, label);
  if (title) node.title = title;
  return node;
}

function progress(order) {
  const cell = el("td", "progress");
  cell.append(step("placed", "done"));
  cell.append(el("span", "arrow", "→"));
  if (order.status === "pending") {
    cell.append(step("deciding", "waiting"));
  } else {
    cell.append(step(order.status, order.status, order.reason || ""));
  }
  cell.append(el("span", "arrow", "→"));
  if (order.email_sent === null || order.email_sent === undefined) {
    cell.append(step("e-mail", "waiting"));
  } else if (order.email_sent) {
    cell.append(step("e-mailed", "done", order.email_kind || ""));
  } else {
    cell.append(step("e-mail failed", "declined", order.email_kind || ""));
  }
  if (order.reason) cell.append(el("div", "reason", order.reason));
  return cell;
}

function renderOrders(orders) {
  const body = document.getElementById("orders");
  const rows = orders.map((order) => {
    const row = el("tr");
    row.dataset.orderId = String(order.order_id);
    row.dataset.stage = order.stage;
    row.append(el("td", "id", order.order_id));
    row.append(el("td", null, order.user_email));
    row.append(el("td", "num", Number(order.price).toFixed(2)));
    row.append(el("td", "details", detailsText(order.details)));
    row.append(progress(order));
    row.append(el("td", "num", clock(order.placed_at)));
    row.append(el("td", "num", seconds(order.decision_secs)));
    row.append(el("td", "num", seconds(order.email_secs)));
    return row;
  });
  if (rows.length === 0) {
    const row = el("tr", "empty");
    const cell = el("td", null, "No orders yet.");
    cell.colSpan = 8;
    row.append(cell);
    rows.push(row);
  }
  body.replaceChildren(...rows);
}

function svg(tag, attributes, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function renderChart(minutes) {
  const width = 900, height = 220, left = 36, bottom = 24, top = 10;
  const plotHeight = height - bottom - top;
  const max = Math.max(1, ...minutes.map((m) => m.confirmed + m.declined + m.pending));
  const slot = (width - left) / Math.max(1, minutes.length);
  const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": "orders per minute" });
  for (const fraction of [0, 0.5, 1]) {
    const y = top + plotHeight * (1 - fraction);
    chart.append(svg("line", { x1: left, x2: width, y1: y, y2: y, class: "grid" }));
    chart.append(svg("text", { x: left - 6, y: y + 4, "text-anchor": "end", class: "axis" }, String(Math.round(max * fraction))));
  }
  minutes.forEach((minute, i) => {
    const x = left + i * slot + slot * 0.15;
    let y = top + plotHeight;
    for (const kind of ["confirmed", "declined", "pending"]) {
      const count = minute[kind];
      if (count > 0) {
        const h = (count / max) * plotHeight;
        y -= h;
        const bar = svg("rect", { x, y, width: slot * 0.7, height: h, class: "bar " + kind });
        bar.append(svg("title", {}, `${clock(minute.start).slice(0, 5)} ${kind}: ${count}`));
        chart.append(bar);
      }
    }
    const last = i === minutes.length - 1;
    if (i % 5 === 0 || last) {
      const labelX = last ? x + slot * 0.7 : x + slot * 0.35;
      chart.append(svg("text", { x: labelX, y: height - 6, "text-anchor": last ? "end" : "middle", class: "axis" }, clock(minute.start).slice(0, 5)));
    }
  });
  document.getElementById("chart").replaceChildren(chart);
}

function render(snapshot) {
  const totals = snapshot.totals;
  setText("day", totals.today.day + " (UTC)");
  setText("today-orders", totals.today.orders);
  setText("today-revenue", totals.today.revenue);
  setText("today-declined", totals.today.declined);
  const pipeline = totals.pipeline;
  setText("placed-today", pipeline.placed_today);
  setText("pipeline", `${pipeline.awaiting_decision} awaiting decision · ${pipeline.awaiting_email} awaiting e-mail`);
  setText("lag", pipeline.lag.length === 0
    ? "consumer lag: measuring…"
    : "consumer lag: " + pipeline.lag.map((g) => `${g.stage} ${g.lag}`).join(" · "));
  const stuck = pipeline.stuck_awaiting_decision + pipeline.stuck_awaiting_email;
  setText("stuck", stuck === 0
    ? "no stuck orders"
    : `stuck: ${pipeline.stuck_awaiting_decision} awaiting decision, ${pipeline.stuck_awaiting_email} awaiting e-mail (longest: `
      + pipeline.stuck.slice(0, 5).map((o) => `${o.order_id} ${Math.round(o.waiting_secs)} s`).join(", ") + ")");
  const all = totals.all_time || { orders: 0, revenue: "0.00", declined: 0 };
  setText("all-orders", all.orders);
  setText("all-revenue", all.revenue);
  setText("all-declined", all.declined);
  setText("skipped", totals.skipped_messages > 0 ? `${totals.skipped_messages} unreadable messages skipped` : "");
  renderChart(snapshot.minutes);
  renderOrders(snapshot.orders);
}

function connect() {
  const status = document.getElementById("connection");
  const source = new EventSource("/api/events");
  source.addEventListener("open", () => {
    status.textContent = "live";
    status.className = "connection live";
  });
  source.addEventListener("snapshot", (message) => {
    render(JSON.parse(message.data));
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  });
  source.addEventListener("error", () => {
    // EventSource reconnects by itself.
    status.textContent = "reconnecting…";
    status.className = "connection down";
  });
}

document.addEventListener("DOMContentLoaded", connect);
