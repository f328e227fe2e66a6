// The login form: comes back to the page that asked for it; says when a key failed.
"use strict";
(function () {
  const q = new URLSearchParams(location.search);
  document.getElementById("failed").hidden = q.get("failed") !== "1";
  if (location.pathname !== "/ui/login") {
    document.getElementById("next").value = location.pathname + location.search;
  } else if (q.get("next")) {
    document.getElementById("next").value = q.get("next");
  }
})();
