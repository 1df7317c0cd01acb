// Keeps a page's live part fresh: asks the server for it again every few seconds while the page is visible,
// and swaps it in without a reload. The server renders it, so this is all the script there is.
(function () {
  "use strict";
  var page = document.getElementById("page");
  if (!page) return;
  var url = page.dataset.liveUrl || window.location.pathname;
  // A notice of what an action did is shown once: a reload or a bookmark of the page does not repeat it.
  if (url !== window.location.pathname + window.location.search) window.history.replaceState(null, "", url);
  if (!page.dataset.live) return;
  var every = 1000 * (Number(page.dataset.refresh) || 2);
  var busy = false;
  function refresh() {
    if (busy || document.visibilityState !== "visible") return;
    var live = document.getElementById("live");
    if (!live) return;
    busy = true;
    fetch(url, { headers: { "X-Orbatch-Live": "1" }, credentials: "same-origin" })
      .then(function (answer) {
        // Signed out, or the key revoked: the whole page goes to the sign-in form.
        if (answer.redirected || answer.status === 401) { window.location.reload(); return null; }
        page.dataset.stale = answer.ok ? "" : String(answer.status);
        return answer.ok ? answer.text() : null;
      })
      .then(function (html) {
        if (html !== null && html !== undefined) {
          live.innerHTML = html;
          document.body.dataset.refreshedAt = String(Date.now());
        }
      })
      .catch(function () { page.dataset.stale = "unreachable"; })
      .finally(function () { busy = false; });
  }
  window.setInterval(refresh, every);
  document.addEventListener("visibilitychange", refresh);
})();
