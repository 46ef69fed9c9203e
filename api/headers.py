"""Security headers on every answer, and the API docs served from the installed package.

* `X-Content-Type-Options: nosniff`, `Referrer-Policy: no-referrer` and
  `X-Frame-Options: DENY` everywhere.
* `Cache-Control: no-store` on every answer that does not say otherwise: answers carry
  personal data (users, orders, audit history), and no shared or browser cache may keep them.
* A `Content-Security-Policy` that allows nothing on the JSON answers, and on `/docs` only
  scripts, styles and images from this server: the page has no inline script and loads
  Swagger UI from the `fastapi-offline` package, never from a CDN.
"""

from __future__ import annotations

from importlib.resources import files

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from eventkeep.api.errors import ApiError

API_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
DOCS_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; frame-ancestors 'none'; base-uri 'none'; "
    "form-action 'none'"
)
ALWAYS = {
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}


# What `add` appends to an answer that names none of these headers (most of them): the same
# headers in the same order as the general case writes them, without a pass per header.
_SET = (*ALWAYS, "cache-control", "content-security-policy")
_SET_NAMES = frozenset(name.encode() for name in _SET)
_APPENDED = [
    *((name.encode(), value.encode()) for name, value in ALWAYS.items()),
    (b"cache-control", b"no-store"),
    (b"content-security-policy", API_POLICY.encode()),
]


class SecurityHeaders:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def add(message: Message) -> None:
            if message["type"] == "http.response.start":
                given = message.get("headers", ())
                if _SET_NAMES.isdisjoint(name for name, _ in given):
                    message["headers"] = [*given, *_APPENDED]
                    await send(message)
                    return
                headers = MutableHeaders(scope=message)
                for name, value in ALWAYS.items():
                    headers[name] = value
                if "cache-control" not in headers:
                    headers["cache-control"] = "no-store"
                if "content-security-policy" not in headers:
                    headers["content-security-policy"] = API_POLICY
            await send(message)

        await self.app(scope, receive, add)


# --- the docs page -------------------------------------------------------------------------

router = APIRouter(include_in_schema=False)
ASSETS = files("fastapi_offline") / "static"
ASSET_TYPES = {
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "favicon.png": "image/png",
}
# The page's only script of its own, served as a file: the policy allows no inline script.
INIT_SCRIPT = """window.addEventListener("load", function () {
  window.ui = SwaggerUIBundle({
    url: document.body.dataset.openapi,
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
"""
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title} - API docs</title>
<link rel="icon" type="image/png" href="/docs/assets/favicon.png">
<link rel="stylesheet" href="/docs/assets/swagger-ui.css">
</head>
<body data-openapi="{openapi}">
<div id="swagger-ui"></div>
<script src="/docs/assets/swagger-ui-bundle.js"></script>
<script src="/docs/assets/init.js"></script>
</body>
</html>
"""


@router.get("/docs")
def docs(request: Request) -> HTMLResponse:
    app = request.app
    page = PAGE.format(title=app.title, openapi=app.openapi_url)
    return HTMLResponse(page, headers={"Content-Security-Policy": DOCS_POLICY})


@router.get("/docs/assets/{name}")
def docs_asset(name: str) -> Response:
    # Assets of a fixed version: a browser may keep them, they hold no personal data.
    cache = {"Cache-Control": "public, max-age=86400"}
    if name == "init.js":
        return Response(INIT_SCRIPT, media_type="text/javascript; charset=utf-8", headers=cache)
    if name not in ASSET_TYPES:
        raise ApiError("NOT_FOUND", f"No asset {name}.", {"name": name})
    body = (ASSETS / name).read_bytes()
    return Response(body, media_type=ASSET_TYPES[name], headers=cache)
