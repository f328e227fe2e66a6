// Shared by the pages: JSON from /ui/api (401: back to the login form), the filter form
// kept in the page's URL, and small table helpers.  No request leaves this origin.
"use strict";
const LS = (function () {
  async function api(name, params) {
    const url = "/ui/api/" + name + (params ? "?" + params.toString() : "");
    const res = await fetch(url, { credentials: "same-origin", headers: { accept: "application/json" } });
    if (res.status === 401) {
      location.href = "/ui/login?next=" + encodeURIComponent(location.pathname + location.search);
      throw new Error("not logged in");
    }
    const body = await res.json();
    if (!res.ok) throw new Error(body.error || res.statusText);
    return body;
  }

  // the form's fields as parameters (empty ones left out); days only without from/to
  function params(form) {
    const p = new URLSearchParams();
    for (const [k, v] of new FormData(form)) {
      if (typeof v === "string" && v.trim() !== "") p.append(k, v.trim());
    }
    if (p.has("start") || p.has("end")) p.delete("days");
    if (p.getAll("types").length) {
      const types = p.getAll("types").join(",");
      p.delete("types");
      p.set("types", types);
    }
    return p;
  }

  // the URL's parameters into the form (a reload or a shared link shows the same view)
  function restore(form) {
    const q = new URLSearchParams(location.search);
    for (const el of form.elements) {
      if (!el.name || !q.has(el.name)) continue;
      if (el.type === "checkbox") {
        el.checked = q.get(el.name).split(",").includes(el.value);
      } else {
        el.value = q.get(el.name);
      }
    }
    if ((q.has("start") || q.has("end")) && !q.has("days")) form.elements.days.value = "";
  }

  function showError(err) {
    const p = document.getElementById("error");
    p.textContent = err ? String(err.message || err) : "";
    p.hidden = !err;
  }

  function cell(tr, text, cls) {
    const td = document.createElement("td");
    td.textContent = text === null || text === undefined ? "" : String(text);
    if (cls) td.className = cls;
    tr.appendChild(td);
    return td;
  }

  function table(el, head, rows) {
    el.replaceChildren();
    const thead = el.createTHead().insertRow();
    for (const h of head) {
      const th = document.createElement("th");
      th.textContent = h;
      thead.appendChild(th);
    }
    const body = el.createTBody();
    if (!rows.length) {
      const tr = body.insertRow();
      const td = cell(tr, "none", "none");
      td.colSpan = head.length;
    }
    for (const r of rows) {
      const tr = body.insertRow();
      r.forEach((v, i) => cell(tr, v, i > 0 && typeof v === "number" ? "n" : ""));
    }
  }

  async function who(select) {
    const me = await api("whoami");
    document.getElementById("who").textContent = me.name + (me.admin ? " (admin)" : "");
    const choices = me.accounts || me.choices;
    for (const a of choices) {
      const o = document.createElement("option");
      o.value = o.textContent = a;
      select.appendChild(o);
    }
    if (me.accounts && me.accounts.length === 1) {
      select.value = me.accounts[0];
      select.options[0].remove();
    }
    // the syslog hosts of a central log: the field shows where there are several
    const hosts = document.getElementById("hosts");
    if (hosts) {
      for (const h of me.hosts || []) {
        const o = document.createElement("option");
        o.value = h;
        hosts.appendChild(o);
      }
      const shown = (me.hosts || []).length > 1 || new URLSearchParams(location.search).has("host");
      document.getElementById("host-field").hidden = !shown;
    }
    return me;
  }

  const time = (iso) => (iso ? iso.replace("+00:00", "Z").replace("T", " ") : "");
  return { api, params, restore, showError, table, cell, who, time };
})();
