"""ASGI middleware in front of every route: what a request must be before BentoML parses it.

A service on localhost is reachable from any web page the user opens (a form POST, ``fetch`` with a
"simple" content type, DNS rebinding to read answers). So, in this order:
  1. Host must be an allowed name (GANOPS_ALLOWED_HOSTS; default localhost, 127.0.0.1, [::1]) -> else 400.
     DNS rebinding sends the attacker's host name, so it stops here. /livez and /readyz are exempt
     (orchestrators probe by IP).
  2. A POST carrying an Origin must come from the page's own origin (or GANOPS_ALLOWED_ORIGINS) -> 403.
  3. Content type: JSON routes take only application/json, or no body at all (a cross-site form cannot
     send JSON without a CORS preflight, which we never grant); /stylize takes only multipart/form-data
     -> else 415.
  4. The body is read here, counted chunk by chunk whatever the headers say (chunked encoding too), up to
     the route's limit -> else 413; then replayed to the app.
  5. /stylize: the form is parsed here first: ``image`` must be one uploaded file with a sane file name
     and ``style`` a plain field. BentoML would otherwise download a URL sent as a string in a file field
     (``MultipartSerde.ensure_file``); the server never fetches what a client names.
Every answer gets ``X-Model-Version`` (the route's own when it set one, else the version served now).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, TypeAlias
from urllib.parse import urlsplit

from starlette.datastructures import Headers, UploadFile
from starlette.requests import Request
from starlette.responses import JSONResponse

Scope: TypeAlias = dict[str, Any]
Receive: TypeAlias = Callable[..., Any]
Send: TypeAlias = Callable[..., Any]
PROBES = frozenset({"/livez", "/readyz"})
UNSAFE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_FILENAME = 200  # bytes: BentoML keeps the name as a temp file's suffix, and file names stop at 255


def _hostname(host: str) -> str:
    """``host[:port]`` -> host, lower case; IPv6 keeps its brackets (``[::1]:3000`` -> ``[::1]``)."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class Guard:
    """See the module docstring. ``version()`` is the version served now (for ``X-Model-Version``)."""

    def __init__(
        self,
        app: Any,
        *,
        hosts: Iterable[str],
        origins: Iterable[str] = (),
        json_routes: Iterable[str],
        multipart_routes: Iterable[str],
        max_body: int,
        max_upload: int,
        version: Callable[[], Any],
    ) -> None:
        self.app, self.version = app, version
        self.hosts = {h.strip().lower() for h in hosts if h.strip()}
        self.origins = {o.strip().lower().rstrip("/") for o in origins if o.strip()}
        self.json_routes, self.multipart_routes = frozenset(json_routes), frozenset(multipart_routes)
        self.max_body, self.max_upload = max_body, max_upload

    def _refuse(self, scope: Scope, headers: Headers) -> JSONResponse | None:
        path, method = scope["path"], scope["method"]
        host = headers.get("host", "")
        if path not in PROBES and "*" not in self.hosts and _hostname(host) not in self.hosts:
            return _error(400, f"Host {host!r} is not allowed here (allowed: {', '.join(sorted(self.hosts))}; "
                               "set GANOPS_ALLOWED_HOSTS to serve under another name)")  # fmt: skip
        origin = headers.get("origin")
        if method in UNSAFE and origin is not None:
            o = origin.strip().lower().rstrip("/")
            same = urlsplit(o).netloc == host.strip().lower() and urlsplit(o).scheme in ("http", "https")
            if not same and o not in self.origins:
                return _error(403, f"cross-origin request from {origin!r} refused (set GANOPS_ALLOWED_ORIGINS "
                                   "to allow a web app on another origin)")  # fmt: skip
        media = headers.get("content-type", "").split(";")[0].strip().lower()
        # an empty POST without a type is fine (nothing to parse: `curl -X POST .../model`); any body
        # of another type is refused
        empty = (
            media == "" and headers.get("content-length", "0") == "0" and "transfer-encoding" not in headers
        )
        if method == "POST" and path in self.json_routes and media != "application/json" and not empty:
            return _error(415, f"{path} takes a JSON body: send Content-Type: application/json")
        if method == "POST" and path in self.multipart_routes and media != "multipart/form-data":
            return _error(415, f"{path} takes a multipart/form-data upload (curl -F image=@photo.jpg)")
        return None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = Headers(scope=scope)
        refused = self._refuse(scope, headers)
        if refused is not None:
            return await refused(scope, receive, send)
        path = scope["path"]
        limit = self.max_upload if path in self.multipart_routes else self.max_body
        length = headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _error(413, f"request body over {limit} bytes")(scope, receive, send)
        body, more = bytearray(), True
        while more:  # count what arrives, not what the headers promise (chunked bodies have no length)
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > limit:
                return await _error(413, f"request body over {limit} bytes")(scope, receive, send)
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": bytes(body), "more_body": False}
            return await receive()  # after the body: wait for the disconnect, as the app expects

        if scope["method"] == "POST" and path in self.multipart_routes:
            problem = await self._check_form(scope, bytes(body))
            if problem is not None:
                return await _error(400, problem)(scope, receive, send)

        async def send_with_version(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                if b"x-model-version" not in names:
                    message = {**message, "headers": [*message.get("headers", []),
                                                      (b"x-model-version", str(self.version()).encode())]}  # fmt: skip
            await send(message)

        await self.app(scope, replay, send_with_version)

    async def _check_form(self, scope: Scope, body: bytes) -> str | None:
        """Why this multipart body is refused, or None: ``image`` one file, ``style`` text, few parts."""

        async def once() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        try:
            form = await Request(scope, once).form(max_files=1, max_fields=8)
        except Exception as err:  # noqa: BLE001 - python-multipart / starlette raise several kinds
            return f"the multipart body cannot be parsed ({getattr(err, 'detail', err)})"
        try:
            images = form.getlist("image")
            if len(images) != 1 or not isinstance(images[0], UploadFile):
                return "`image` must be one uploaded file (curl -F image=@photo.jpg), not text or a URL"
            name = images[0].filename or ""
            if len(name.encode("utf-8", "surrogatepass")) > MAX_FILENAME or "\x00" in name:
                return f"the file name is longer than {MAX_FILENAME} bytes or holds a NUL: rename the file"
            if any(isinstance(v, UploadFile) for k, v in form.multi_items() if k != "image"):
                return "only `image` may be a file; `style` is a plain form field"
        finally:
            await form.close()
        return None
