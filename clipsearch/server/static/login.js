// Logging in from the address `clipsearch serve` printed (/?token=...): the token goes to this
// origin's service worker (sw.js), which sends it with this origin's requests only, and leaves the
// address bar. Where a service worker cannot run (an address that is not a secure context, such
// as http://192.168.1.20:8765 on a home network), the server keeps it in a cookie instead, which
// the browser also sends to the other ports of that host: the documented fallback.
"use strict";

(async () => {
  const params = new URLSearchParams(location.search);
  const token = params.get("token");
  params.delete("token");
  const rest = location.pathname + (params.toString() ? "?" + params : "");
  const note = document.getElementById("note");
  if ("serviceWorker" in navigator && window.isSecureContext) {
    try {
      const registration = await navigator.serviceWorker.register("/sw.js", {scope: "/"});
      await navigator.serviceWorker.ready;
      const worker = registration.active;
      await new Promise((kept, failed) => {
        const channel = new MessageChannel();
        channel.port1.onmessage = () => kept();
        worker.postMessage({credential: token}, [channel.port2]);
        setTimeout(() => failed(new Error("the service worker did not answer")), 10000);
      });
      location.replace(rest);
      return;
    } catch (error) {
      note.textContent = "Keeping the token in a cookie (" + error.message + ")";
    }
  }
  params.set("token", token);
  params.set("cookie", "1");
  location.replace(location.pathname + "?" + params);
})();
