// The gallery's credential, bound to this origin (scheme, host and port). A server started with a
// token needs it on every request; a cookie would be sent to every port of the host (cookies are
// not isolated by port), so this worker keeps it instead and adds it, as an Authorization header,
// to the requests of this origin alone. login.js hands it over once, from the address `clipsearch
// serve` printed; it stays in this origin's Cache Storage, which no other port can read.
"use strict";

const STORE = "clipsearch-credential";
const KEY = "/.credential";
let credential = null;  // read from the store once the worker (re)starts

async function current() {
  if (credential === null) {
    const kept = await (await caches.open(STORE)).match(KEY);
    credential = kept ? await kept.text() : "";
  }
  return credential;
}

self.addEventListener("install", () => self.skipWaiting());
self.addEventListener("activate", (event) => event.waitUntil(self.clients.claim()));

self.addEventListener("message", (event) => {
  const given = event.data && typeof event.data.credential === "string" ? event.data.credential : null;
  if (given === null) return;
  event.waitUntil((async () => {
    await (await caches.open(STORE)).put(KEY, new Response(given));
    credential = given;
    if (event.ports[0]) event.ports[0].postMessage("kept");
  })());
});

async function withCredential(request) {
  const given = await current();
  if (!given) return fetch(request);
  const headers = new Headers(request.headers);
  // percent-encoded: a header holds Latin-1 only, a token may hold any printable character
  headers.set("Authorization", "Bearer " + encodeURIComponent(given));
  const init = {method: request.method, headers, credentials: "omit", cache: request.cache,
                redirect: request.mode === "navigate" ? "manual" : request.redirect,
                referrerPolicy: "no-referrer"};
  if (request.method !== "GET" && request.method !== "HEAD") init.body = await request.arrayBuffer();
  return fetch(new Request(request.url, init));
}

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  // another origin (another port of this host included) never sees the credential; the worker's
  // own files and the login page need none
  if (url.origin !== self.location.origin || url.pathname === "/sw.js") return;
  if (url.searchParams.has("token")) return;
  event.respondWith(withCredential(event.request));
});
