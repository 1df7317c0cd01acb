// Keeps a page's live part fresh: asks the server for it again every few seconds while the page is visible,
// and swaps it in without a reload. The server renders it, so this is all the script there is.
(function () {
  "use strict";
  var page = document.getElementById("page");
  if (!page || !page.dataset.live) return;
  var every = 1000 * (Number(page.dataset.refresh) || 2);
  var busy = false;
  function refresh() {
    if (busy || document.visibilityState !== "visible") return;
    var live = document.getElementById("live");
    if (!live) return;
    busy = true;
    fetch(window.location.href, { headers: { "X-Orbatch-Live": "1" }, credentials: "same-origin" })
      .then(function (answer) {
        if (answer.redirected || answer.status === 401) { window.location.reload(); return null; }
        return answer.ok ? answer.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== undefined) {
          live.innerHTML = html;
          document.body.dataset.refreshedAt = String(Date.now());
        }
      })
      .catch(function () { /* the next tick tries again */ })
      .finally(function () { busy = false; });
  }
  window.setInterval(refresh, every);
  document.addEventListener("visibilitychange", refresh);
})();
