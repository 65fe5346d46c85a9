// Kura's console behaviours. No page has inline script (the CSP forbids it);
// pages opt in with data- attributes.
"use strict";
(function () {
  // Idle timeout: when the policy's idle time passes without activity, go to
  // the sign-in page (the vault has ended the session by then anyway).
  const idle = Number(document.body.dataset.idleMinutes || 0);
  if (idle > 0) {
    let last = Date.now();
    const touch = () => { last = Date.now(); };
    ["click", "keydown", "mousemove", "scroll"].forEach((e) => document.addEventListener(e, touch, { passive: true }));
    setInterval(() => {
      if (Date.now() - last > idle * 60000) { window.location.assign("/login?expired=1"); }
    }, 15000);
  }

  // My Number check digit (DESIGN.md): weights 6,5,4,3,2,7,6,5,4,3,2 over the first 11.
  function myNumberValid(text) {
    const digits = text.replace(/[\s\-－ー‐]/g, "").replace(/[０-９]/g, (c) => String.fromCharCode(c.charCodeAt(0) - 0xfee0));
    if (!/^\d{12}$/.test(digits) || /^0+$/.test(digits)) { return false; }
    const w = [6, 5, 4, 3, 2, 7, 6, 5, 4, 3, 2];
    let sum = 0;
    for (let i = 0; i < 11; i++) { sum += Number(digits[i]) * w[i]; }
    const r = sum % 11;
    const check = r <= 1 ? 0 : 11 - r;
    return check === Number(digits[11]);
  }
  // Fields marked data-my-number are checked as the user types.
  document.querySelectorAll("input[data-my-number]").forEach((input) => {
    const note = document.getElementById(input.id + "-check");
    const check = () => {
      const v = input.value.trim();
      const ok = v === "" || myNumberValid(v);
      input.setAttribute("aria-invalid", ok ? "false" : "true");
      if (note) { note.textContent = ok ? "" : (note.dataset.message || "invalid"); }
    };
    input.addEventListener("input", check);
    input.addEventListener("blur", check);
  });

  // A revealed number disappears after data-hide-after seconds.
  document.querySelectorAll("[data-hide-after]").forEach((el) => {
    const seconds = Number(el.dataset.hideAfter || 30);
    const counter = el.querySelector("[data-countdown]");
    let left = seconds;
    const timer = setInterval(() => {
      left -= 1;
      if (counter) { counter.textContent = String(left); }
      if (left <= 0) {
        clearInterval(timer);
        el.textContent = el.dataset.hiddenText || "";
        el.classList.add("muted");
      }
    }, 1000);
  });

  // Buttons that print the page.
  document.querySelectorAll("[data-print]").forEach((b) => b.addEventListener("click", () => window.print()));

  // Forms that ask to confirm first (data-confirm holds the question).
  document.querySelectorAll("form[data-confirm]").forEach((f) => f.addEventListener("submit", (e) => {
    if (!window.confirm(f.dataset.confirm)) { e.preventDefault(); }
  }));

  // Progress of a background job: an element with data-progress-url is polled
  // (JSON {done, total, finished, redirect}) and fills its <progress>.
  document.querySelectorAll("[data-progress-url]").forEach((box) => {
    const bar = box.querySelector("progress");
    const text = box.querySelector("[data-progress-text]");
    const poll = async () => {
      try {
        const r = await fetch(box.dataset.progressUrl, { credentials: "same-origin", cache: "no-store" });
        if (!r.ok) { return; }
        const s = await r.json();
        if (bar) { bar.max = Math.max(1, s.total); bar.value = s.done; }
        if (text) { text.textContent = s.done + " / " + s.total; }
        if (s.finished) { window.location.assign(s.redirect || window.location.pathname); return; }
      } catch (e) { /* the next poll tries again */ }
      setTimeout(poll, 500);
    };
    poll();
  });
})();
