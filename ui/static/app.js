// INFER's dashboard behaviour, on top of htmx: copy buttons, busy buttons while a request
// runs, and focus after a swap. No framework, no inline script (the CSP forbids it).
(function () {
  "use strict";

  function flash(button, text) {
    var before = button.textContent;
    button.textContent = text;
    setTimeout(function () { button.textContent = before; }, 1500);
  }

  // <button data-copy="#id"> copies the text (or the value) of #id.
  document.addEventListener("click", function (event) {
    var button = event.target.closest("[data-copy]");
    if (!button) return;
    var source = document.querySelector(button.getAttribute("data-copy"));
    if (!source) return;
    var text = "value" in source ? source.value : source.textContent;
    if (!navigator.clipboard) {
      if (source.select) source.select();
      flash(button, "Press Ctrl+C");
      return;
    }
    navigator.clipboard.writeText(text.trim()).then(
      function () { flash(button, "Copied"); },
      function () { if (source.select) source.select(); flash(button, "Press Ctrl+C"); }
    );
  });

  function submitButton(elt) {
    if (elt.tagName === "BUTTON") return elt;
    if (elt.tagName === "FORM") return elt.querySelector("button[type=submit], button:not([type])");
    return null;
  }

  document.addEventListener("htmx:beforeRequest", function (event) {
    var button = submitButton(event.detail.elt);
    if (button) { button.setAttribute("aria-busy", "true"); button.disabled = true; }
  });

  document.addEventListener("htmx:afterRequest", function (event) {
    var button = submitButton(event.detail.elt);
    if (button) { button.removeAttribute("aria-busy"); button.disabled = false; }
  });

  // After a form comes back with errors, the first invalid field gets the focus; a
  // swapped block may name the element to focus with data-focus.
  function focusIn(root, selector) {
    var target = root.querySelector(selector);
    if (target && !target.closest("[hx-trigger*=every]")) target.focus();
  }

  document.addEventListener("htmx:afterSettle", function (event) {
    var root = event.detail.elt && event.detail.elt.isConnected ? event.detail.elt : document;
    focusIn(root, "[aria-invalid=true], [data-focus]");
  });

  // A result that names its focus (a new key's secret) when it came as a whole page: a
  // form sent before htmx took it over (just swapped in), or by a browser without htmx.
  document.addEventListener("DOMContentLoaded", function () { focusIn(document, "[data-focus]"); });
})();
