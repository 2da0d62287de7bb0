// The live page: candles per instrument, latest prices and quality alerts from `mdstream serve`.
// State is kept in window.md (tests and the console can read it).
(() => {
  const params = new URLSearchParams(location.search);
  const instruments = (params.get("instruments") || "AAPL,MSFT,NVDA,SPY").split(",").filter(Boolean);
  const timeframe = params.get("timeframe") || "1s";
  const maxCandles = 120;
  const md = (window.md = { candles: {}, latest: {}, lastBar: {}, alerts: [], errors: [], frames: 0 });
  const charts = {};

  function chart(instrument) {
    if (charts[instrument]) return charts[instrument];
    const box = document.createElement("div");
    box.className = "chart";
    box.id = `chart-${instrument}`;
    box.innerHTML = `<h3>${instrument} · ${timeframe}<span class="last"></span></h3><canvas width="800" height="220"></canvas>`;
    document.getElementById("charts").appendChild(box);
    charts[instrument] = { canvas: box.querySelector("canvas"), last: box.querySelector(".last"), box };
    return charts[instrument];
  }

  function draw(instrument) {
    const key = `${instrument}|${timeframe}`;
    const candles = md.candles[key] || [];
    const c = chart(instrument);
    c.box.dataset.candles = String(candles.length);
    const ctx = c.canvas.getContext("2d");
    const w = c.canvas.width, h = c.canvas.height;
    ctx.clearRect(0, 0, w, h);
    if (!candles.length) return;
    const lo = Math.min(...candles.map((b) => b.low)), hi = Math.max(...candles.map((b) => b.high));
    const span = hi - lo || 1, step = w / maxCandles;
    const y = (p) => h - 10 - ((p - lo) / span) * (h - 20);
    candles.forEach((b, i) => {
      const x = i * step + step / 2;
      ctx.strokeStyle = ctx.fillStyle = b.close >= b.open ? "#4c4" : "#e55";
      ctx.beginPath(); ctx.moveTo(x, y(b.high)); ctx.lineTo(x, y(b.low)); ctx.stroke();
      const top = y(Math.max(b.open, b.close)), bottom = y(Math.min(b.open, b.close));
      ctx.fillRect(x - step * 0.35, top, step * 0.7, Math.max(bottom - top, 1));
    });
    const last = candles[candles.length - 1];
    c.last.textContent = `${new Date(last.start_ns / 1e6).toISOString().slice(11, 19)} close ${last.close}`;
  }

  function onBar(m) {
    const key = `${m.instrument}|${m.timeframe}`;
    const list = (md.candles[key] = md.candles[key] || []);
    const b = m.bar;
    const i = list.findIndex((x) => x.start_ns === b.start_ns);
    if (i >= 0) list[i] = b; // a correction replaces its window
    else if (!list.length || list[list.length - 1].start_ns < b.start_ns) list.push(b);
    else return; // older than what is shown
    if (list.length > maxCandles) list.shift();
    md.lastBar[m.instrument] = b;
    draw(m.instrument);
    renderLatest();
  }

  function renderLatest() {
    const body = document.querySelector("#latest tbody");
    body.innerHTML = "";
    for (const s of instruments) {
      const tr = document.createElement("tr");
      tr.id = `latest-${s}`;
      const bar = md.lastBar[s], lat = md.latest[s];
      tr.innerHTML = `<td>${s}</td><td>${bar ? bar.close : "–"}</td><td>${lat ? lat.price.toFixed(4) : "–"}</td><td>${lat ? lat.providers : "–"}</td>`;
      body.appendChild(tr);
    }
  }

  function onAlert(m) {
    md.alerts.push(m);
    const li = document.createElement("li");
    li.dataset.severity = m.alert.severity;
    li.textContent = `${m.alert.severity} ${m.alert.alert_type} ${m.alert.status} ${m.instrument}: ${m.alert.description}`;
    const list = document.getElementById("alerts");
    list.prepend(li);
    while (list.children.length > 200) list.lastChild.remove();
  }

  function setStatus(state, text) {
    const el = document.getElementById("status");
    el.dataset.state = state;
    el.textContent = text;
  }

  function connect() {
    const scheme = location.protocol === "https:" ? "wss" : "ws";
    const token = params.get("token");
    const ws = new WebSocket(`${scheme}://${location.host}/ws${token ? `?token=${encodeURIComponent(token)}` : ""}`);
    ws.onopen = () => {
      setStatus("open", "live");
      ws.send(JSON.stringify({ op: "subscribe", instruments, timeframes: [timeframe], channels: ["bars", "latest", "alerts"] }));
    };
    ws.onmessage = (ev) => {
      md.frames += 1;
      const m = JSON.parse(ev.data);
      if (m.type === "bar") onBar(m);
      else if (m.type === "latest") { md.latest[m.instrument] = m.latest; renderLatest(); }
      else if (m.type === "alert") onAlert(m);
      else if (m.type === "error") { md.errors.push(m.error); setStatus("error", m.error); }
    };
    ws.onclose = () => { setStatus("closed", "disconnected; retrying…"); setTimeout(connect, 2000); };
  }

  instruments.forEach(chart);
  renderLatest();
  connect();
})();
