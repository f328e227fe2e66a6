// The dashboard: totals, a chart over time (uPlot), the top reasons, senders and
// providers, and what is in the queue, for the window and account chosen.
"use strict";
(function () {
  const form = document.getElementById("filters");
  let chart = null;

  function draw(s) {
    const el = document.getElementById("chart");
    const data = [s.t, s.sent, s.delivered, s.deferred, s.failed];
    const opts = {
      width: Math.max(el.clientWidth || 800, 400),
      height: 260,
      series: [
        {},
        { label: "sent", stroke: "#3465a4", width: 2 },
        { label: "delivered", stroke: "#4e9a06", width: 2 },
        { label: "deferred", stroke: "#c4a000", width: 2 },
        { label: "failed", stroke: "#cc0000", width: 2 },
      ],
      axes: [{}, {}],
      scales: { x: { time: true } },
      tzDate: (ts) => uPlot.tzDate(new Date(ts * 1e3), "Etc/UTC"), // the store's buckets are UTC
    };
    if (chart) chart.destroy();
    el.replaceChildren();
    chart = new uPlot(opts, data, el);
    el.dataset.points = String(s.t.length);
  }

  async function load() {
    LS.showError(null);
    const p = LS.params(form);
    history.replaceState(null, "", "/ui/" + (p.toString() ? "?" + p.toString() : ""));
    try {
      const [o, s] = await Promise.all([LS.api("overview", p), LS.api("series", p)]);
      document.getElementById("window-start").textContent = o.window.start;
      document.getElementById("window-end").textContent = o.window.end;
      document.getElementById("totals-source").textContent =
        o.totals_source === "emailtrack" ? "the EmailTrack counts of " + o.account : "counted per domain";
      for (const k of ["sent", "delivered", "deferred", "failed", "inprogress"]) {
        document.getElementById("total-" + k).textContent = String(o.totals[k]);
      }
      LS.table(document.getElementById("top-failures"), ["Reason", "Recipients"], o.top_failures);
      LS.table(document.getElementById("top-deferrals"), ["Reason", "Deferrals"], o.top_deferrals);
      LS.table(document.getElementById("top-senders"), ["Sender", "Messages"], o.top_senders);
      LS.table(document.getElementById("providers"), ["Provider", "Delivered", "Deferred", "Failed"], o.providers);
      LS.table(document.getElementById("recipient-domains"), ["Domain", "Outcomes"], o.recipient_domains);
      LS.table(
        document.getElementById("in-progress"),
        ["Since", "Queue id", "Sender", "Recipient"],
        o.in_progress.map((r) => [LS.time(r.sent_at || r.ts), r.queue_id, r.sender, r.recipient])
      );
      draw(s);
      document.body.dataset.loaded = "1";
    } catch (err) {
      LS.showError(err);
      document.body.dataset.loaded = "error";
    }
  }

  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    load();
  });
  LS.restore(form);
  LS.who(document.getElementById("account"))
    .then(() => {
      LS.restore(form);
      return load();
    })
    .catch((err) => {
      LS.showError(err);
      document.body.dataset.loaded = "error";
    });
})();
