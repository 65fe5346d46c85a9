// Exports (area "use"). No inline script: pages opt in with data- attributes.
"use strict";
(function () {
  // A download answers with a file, so the page stays; once the browser has
  // it, reload to show the request as downloaded (and keep a second click off).
  document.querySelectorAll("form[data-download]").forEach((f) => f.addEventListener("submit", () => {
    const button = f.querySelector("button[type=submit]");
    setTimeout(() => { if (button) { button.disabled = true; } }, 0);
    setTimeout(() => window.location.reload(), 1500);
  }));
})();
