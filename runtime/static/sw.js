// The page's service worker (served at /sw.js so that it controls the whole site): it keeps the page's shell
// (HTML, script, style, manifest, icons) so the installed app opens even when the server cannot be reached,
// and the page then says so. The shell is fetched from the network first (an upgraded server's page shows at
// once) and from the cache when the network fails or is slow; the API (/transcribe, /patients ...) is never
// cached: a transcript or a patient list from the cache would be a wrong answer.
"use strict";

const CACHE = "resonance-shell-v1";
const SHELL = [
  "/",
  "/static/app.js",
  "/static/style.css",
  "/static/manifest.webmanifest",
  "/static/icon-192.png",
  "/static/icon-512.png",
  "/static/apple-touch-icon.png",
];
const NETWORK_WAIT_MS = 3000; // a server that is off on the LAN may not answer at all: use the cache then

self.addEventListener("install", (event) => {
  event.waitUntil(
    caches
      .open(CACHE)
      .then((cache) => cache.addAll(SHELL))
      .then(() => self.skipWaiting())
  );
});

self.addEventListener("activate", (event) => {
  event.waitUntil(
    caches
      .keys()
      .then((names) => Promise.all(names.filter((n) => n !== CACHE).map((n) => caches.delete(n))))
      .then(() => self.clients.claim())
  );
});

function fromNetwork(request) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the server did not answer")), NETWORK_WAIT_MS);
    fetch(request).then(
      (response) => {
        clearTimeout(timer);
        resolve(response);
      },
      (error) => {
        clearTimeout(timer);
        reject(error);
      }
    );
  });
}

self.addEventListener("fetch", (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== "GET" || url.origin !== self.location.origin || !SHELL.includes(url.pathname)) {
    return; // the browser fetches it as usual
  }
  event.respondWith(
    fromNetwork(event.request)
      .then((response) => {
        if (response.ok) {
          const copy = response.clone();
          caches.open(CACHE).then((cache) => cache.put(url.pathname, copy));
        }
        return response;
      })
      .catch(() => caches.match(url.pathname).then((cached) => cached || Response.error()))
  );
});
