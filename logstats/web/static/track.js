// Track Delivery: a search over the stored rows, and the trace of one message (a row's
// queue id, or ?trace=ID in the URL).
"use strict";
(function () {
  const form = document.getElementById("search");

  async function trace(id) {
    try {
      const t = await LS.api("trace", new URLSearchParams({ id }));
      document.getElementById("trace-id").textContent = id;
      const body = document.querySelector("#trace tbody");
      body.replaceChildren();
      for (const r of t.rows) {
        const tr = body.insertRow();
        tr.className = "type-" + r.type;
        for (const v of [LS.time(r.ts), r.type, r.queue_id, r.recipient, r.reason, r.remote_host,
                         [r.router, r.transport].filter(Boolean).join(" / "), r.dsn]) {
          LS.cell(tr, v);
        }
      }
      document.getElementById("trace-section").hidden = false;
      document.body.dataset.traced = id;
    } catch (err) {
      LS.showError(err);
      document.body.dataset.traced = "error";
    }
  }

  async function search() {
    LS.showError(null);
    const p = LS.params(form);
    history.replaceState(null, "", "/ui/track" + (p.toString() ? "?" + p.toString() : ""));
    try {
      const s = await LS.api("search", p);
      const counts = Object.entries(s.counts).map(([k, n]) => k + " " + n).join(", ");
      document.getElementById("summary").textContent =
        s.rows.length + " rows shown (" + counts + "), " + s.window.start + " to " + s.window.end;
      const body = document.querySelector("#results tbody");
      body.replaceChildren();
      for (const r of s.rows) {
        const tr = body.insertRow();
        tr.className = "type-" + r.type;
        tr.dataset.queueId = r.queue_id;
        for (const v of [LS.time(r.ts), r.type, r.account, r.sender, r.recipient, r.reason, r.remote_host]) {
          LS.cell(tr, v);
        }
        const a = document.createElement("a");
        a.href = "#";
        a.textContent = r.queue_id;
        a.className = "trace-link";
        a.addEventListener("click", (ev) => {
          ev.preventDefault();
          trace(r.queue_id);
        });
        tr.insertCell().appendChild(a);
      }
      document.body.dataset.loaded = "1";
    } catch (err) {
      LS.showError(err);
      document.body.dataset.loaded = "error";
    }
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    search();
  });
  LS.who(document.getElementById("account"))
    .then(() => {
      LS.restore(form);
      const id = new URLSearchParams(location.search).get("trace");
      return search().then(() => (id ? trace(id) : null));
    })
    .catch((err) => {
      LS.showError(err);
      document.body.dataset.loaded = "error";
    });
})();
