"""Who may talk to the server, and how much they may send.

- A server bound to loopback answers only requests whose Host header names loopback, so a web
  page whose domain has been re-pointed at 127.0.0.1 (DNS rebinding) cannot read the API.
- A token, when set (and always on any other address), is required on every request: an
  `Authorization: Bearer` header for programs and for the browser. The browser gets it by
  opening the URL `serve` prints once, `/?token=...`: a login page hands it to this origin's
  service worker (static/sw.js), which adds the header to this origin's requests alone, and
  drops it from the address bar. A cookie would be sent to every port of the host (cookies are
  not isolated by port): another local user's server would receive it. Only where a service
  worker cannot run (an address that is not a secure context: http://192.168.1.20:PORT) does
  the page fall back to a cookie named with the port (`/?token=...&cookie=1`), which is what is
  left of that: documented in operations.md. The discovery file's secret is accepted too, so
  the CLI finds its way in. The token travels percent-encoded in that address, in the header
  the worker sends and in the cookie, so any printable token (`;`, `+`, `&`, non-Latin-1
  letters) survives; cookies are parsed as browsers send them (Starlette's parser), so another
  local web app's odd cookie cannot lock the gallery out.
- Writes (jobs) need more than reading does: the discovery file's secret, which only the user
  who started the server can read, sent as `Authorization: Bearer` (never a cookie, which a
  browser would attach by itself). The gallery's token reads; it starts nothing.
- Request bodies are bounded (uploads): past the limit the answer is 413, whatever the parser
  made of the cut-off body.
- No CORS headers are ever sent, and responses may not be embedded by other sites.
- A page on another site (another port of 127.0.0.1 included: that is `same-site`) cannot make
  the server work for it either: with `<img src=".../api/dupes?threshold=0.05">` it cannot read
  the answer, but the server would still build it. Whatever the browser says came from another
  page (Sec-Fetch-Site other than `same-origin` or `none`) is refused, except a top-level
  navigation to the gallery itself (a link to it). Programs (curl, the CLI) send no such header.
- A request that changes state (anything but GET and HEAD, e.g. handing a folder to the
  watcher) is refused when it comes from another origin: a web page on the internet can post
  to a loopback server (a "simple" request needs no CORS), so the browser's Sec-Fetch-Site and
  Origin headers must say it came from the gallery itself or from no page at all (the CLI).

A plain ASGI middleware, so that streaming responses pass through untouched.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
from collections.abc import Awaitable, Callable, Iterable
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

from starlette.requests import cookie_parser

COOKIE = "clipsearch_token"  # and the port: clipsearch_token_8765, one per server of a host
# what the login needs before it has the token: no secret is in them
PUBLIC = ("/sw.js", "/static/login.js")
LOGIN_CSP = "default-src 'none'; script-src 'self'; img-src data:; base-uri 'none'; frame-ancestors 'none'"
WRITER = "clipsearch.writer"  # the request scope's key: whether it carries the writer's secret
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
MIN_TOKEN_LENGTH = 16

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


def token_problem(token: str) -> str | None:
    """Why `token` cannot serve as one (None when it can): it must survive an Authorization
    header, which trims spaces and cannot hold control characters."""
    if len(token) < MIN_TOKEN_LENGTH:
        return f"the token is {len(token)} characters long; use at least {MIN_TOKEN_LENGTH} random ones"
    if any(c.isspace() or not c.isprintable() for c in token):
        return "the token holds a space or a control character; use printable characters only"
    return None


def login_url(base: str, token: str) -> str:
    """`base` with the token in its query, encoded so that `+`, `&` or `%` arrive as typed."""
    return f"{base}?token={quote(token, safe='')}"


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _host_name(header: str) -> str:
    """'127.0.0.1:8765' -> '127.0.0.1'; '[::1]:8765' -> '::1'."""
    if header.startswith("["):
        return header[1:].split("]", 1)[0]
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def _foreign(headers: dict[str, str], host: str) -> str | None:
    """Why a state-changing request seems to come from another site's page (None if it does not)."""
    site = headers.get("sec-fetch-site")
    origin = headers.get("origin")
    if site is not None and site not in ("same-origin", "none"):
        return f"refused: this request came from another site's page (Sec-Fetch-Site: {site})"
    if origin is not None and origin != "null" and urlsplit(origin).netloc.lower() != host.lower():
        return f"refused: this request came from another origin ({origin}); use the gallery or the CLI"
    if origin == "null":
        return "refused: this request came from a page without an origin (a sandbox or a file)"
    return None


def _from_another_page(headers: dict[str, str], path: str) -> str | None:
    """Why a request seems made by another site's page (None if not): the gallery's own pages
    say same-origin, a typed address or a bookmark says none, programs say nothing."""
    site = headers.get("sec-fetch-site")
    if site is None or site in ("same-origin", "none"):
        return None
    if path == "/" and headers.get("sec-fetch-mode") == "navigate":
        return None  # a link to the gallery opens it; what the page then asks is same-origin
    return f"refused: this request came from another site's page (Sec-Fetch-Site: {site})"


class Guard:
    def __init__(self, app, *, tokens: Iterable[str], token_required: bool, loopback_only: bool,
                 max_body: int, writer_tokens: Iterable[str] = ()) -> None:
        self.app = app
        self.tokens = [t.encode("utf-8") for t in tokens if t]
        self.writer_tokens = [t.encode("utf-8") for t in writer_tokens if t]
        self.token_required = token_required
        self.loopback_only = loopback_only
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        host = headers.get("host", "")
        if self.loopback_only and not is_loopback(_host_name(host)):
            await _error(send, 400, f"Host header {host!r} is not this server's address; open it as "
                                    "http://127.0.0.1:PORT (requests under other names are refused "
                                    "against DNS rebinding)")
            return
        if scope["method"] not in ("GET", "HEAD") and (why := _foreign(headers, host)) is not None:
            await _error(send, 403, why)
            return
        if (why := _from_another_page(headers, scope["path"])) is not None:
            await _error(send, 403, why)
            return
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True,
                               errors="replace"))
        if self.token_required and scope["path"] not in PUBLIC:
            given = self._token(headers, query, _port(scope))
            if given is None:
                await _error(send, 401, "this server needs its token: open the address that clipsearch "
                                        "serve printed (…/?token=…), or send Authorization: Bearer TOKEN")
                return
            if "token" in query and scope["method"] in ("GET", "HEAD"):
                if query.get("cookie") == "1":  # no service worker where the page is
                    await _set_cookie_and_strip(scope, query, given, send)
                else:
                    await _login_page(send)
                return
        auth = headers.get("authorization", "")
        bearer = auth[7:].strip().encode("latin-1") if auth.lower().startswith("bearer ") else None
        scope[WRITER] = bearer is not None and any(hmac.compare_digest(bearer, t) for t in self.writer_tokens)
        length = headers.get("content-length")
        if length and length.isdigit() and int(length) > self.max_body:
            await _error(send, 413, _too_large(self.max_body))
            return
        await self._pass(scope, receive, send)

    def _token(self, headers: dict[str, str], query: dict[str, str], port: int | None) -> str | None:
        """The valid token this request carries, or None."""
        candidates: list[bytes] = []
        auth = headers.get("authorization", "")
        if auth.lower().startswith("bearer "):
            # the header's own bytes: a client sends a non-ASCII token as UTF-8, the gallery's
            # service worker percent-encoded (a browser's header holds Latin-1 only)
            candidates.append(auth[7:].strip().encode("latin-1"))
            candidates.append(unquote(auth[7:].strip()).encode("utf-8"))
        if "cookie" in headers:
            cookie = cookie_parser(headers["cookie"].encode("latin-1").decode("utf-8", "replace"))
            if cookie_name(port) in cookie:
                candidates.append(unquote(cookie[cookie_name(port)]).encode("utf-8"))
        if "token" in query:
            candidates.append(query["token"].encode("utf-8"))
        for given in candidates:
            if any(hmac.compare_digest(given, t) for t in self.tokens):
                return given.decode("utf-8")
        return None

    async def _pass(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Hand the request on with its body bounded and security headers on the response."""
        received, over, replaced = 0, False, False

        async def bounded() -> dict:
            nonlocal received, over
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    over = True
                    raise BodyTooLarge(self.max_body)
            return message

        async def secured(message: dict) -> None:
            nonlocal replaced
            if replaced:
                return
            if message["type"] == "http.response.start":
                if over:  # the body was cut off: whatever the app made of that, the answer is 413
                    replaced = True
                    await _error(send, 413, _too_large(self.max_body))
                    return
                message = {**message, "headers": [*message.get("headers", []), *_HEADERS]}
            await send(message)

        try:
            await self.app(scope, bounded, secured)
        except BodyTooLarge:
            if not replaced:
                await _error(send, 413, _too_large(self.max_body))


class BodyTooLarge(Exception):
    def __init__(self, limit: int) -> None:
        super().__init__(_too_large(limit))


def _too_large(limit: int) -> str:
    return f"the upload is larger than {limit // (1024 * 1024)} MB; send a smaller image"


async def _error(send: Send, status: int, message: str) -> None:
    body = json.dumps({"error": message}).encode()
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
        *_HEADERS]})
    await send({"type": "http.response.body", "body": body})


def cookie_name(port: int | None) -> str:
    """The fallback cookie of the server on `port`: two servers of one host each keep their own."""
    return f"{COOKIE}_{port}" if port else COOKIE


def _port(scope: Scope) -> int | None:
    server = scope.get("server")
    return int(server[1]) if server and len(server) > 1 and server[1] else None


async def _login_page(send: Send) -> None:
    """The page that hands the token in the address to this origin's service worker (login.js)."""
    from pathlib import Path

    body = (Path(__file__).resolve().parent / "static" / "login.html").read_bytes()
    await send({"type": "http.response.start", "status": 200, "headers": [
        (b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode()),
        (b"cache-control", b"no-store"), (b"content-security-policy", LOGIN_CSP.encode()), *_HEADERS]})
    await send({"type": "http.response.body", "body": body})


async def _set_cookie_and_strip(scope: Scope, query: dict[str, str], token: str, send: Send) -> None:
    """Keep the token in an HttpOnly cookie and send the browser to the same page without it in
    the address (where history, screenshots and shared links would carry it): the fallback of a
    page that cannot run the service worker (login.js)."""
    rest = urlencode({k: v for k, v in query.items() if k not in ("token", "cookie")})
    location = quote(scope.get("root_path", "") + scope["path"]) + (f"?{rest}" if rest else "")
    # percent-encoding leaves only characters a cookie value may hold (RFC 6265 cookie-octets)
    cookie = f"{cookie_name(_port(scope))}={quote(token, safe='')}; HttpOnly; SameSite=Strict; Path=/"
    await send({"type": "http.response.start", "status": 303, "headers": [
        (b"location", location.encode("latin-1")), (b"set-cookie", cookie.encode("latin-1")),
        (b"content-length", b"0"), *_HEADERS]})
    await send({"type": "http.response.body", "body": b""})
