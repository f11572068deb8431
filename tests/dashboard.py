"""A form-filling client for the dashboard's pages, as a browser without JavaScript uses them."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import httpx

PASSWORD = "correct horse battery staple"
_TOKEN = re.compile(r'name="csrf_token" value="([^"]+)"')


class Page:
    """A response, with what tests read of it."""

    def __init__(self, response: httpx.Response) -> None:
        self.response = response
        self.status = response.status_code
        self.html = response.text

    @property
    def csrf_token(self) -> str:
        match = _TOKEN.search(self.html)
        assert match, "no CSRF field on this page"
        return match.group(1)

    @property
    def text(self) -> str:
        """The visible text, tags removed and whitespace collapsed."""
        parser = _Text()
        parser.feed(self.html)
        return " ".join(" ".join(parser.parts).split())

    def __contains__(self, needle: str) -> bool:
        return needle in self.text


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.parts: list[str] = []
        self._skip = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self._skip += tag in ("script", "style")

    def handle_endtag(self, tag: str) -> None:
        self._skip -= tag in ("script", "style")

    def handle_data(self, data: str) -> None:
        if not self._skip:
            self.parts.append(data)


class Dashboard:
    """Opens pages and submits their forms with the page's CSRF token, keeping cookies."""

    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.token = ""

    async def get(self, path: str, *, htmx: bool = False) -> Page:
        headers = {"HX-Request": "true"} if htmx else {}
        page = Page(await self.http.get(path, headers=headers))
        match = _TOKEN.search(page.html) or re.search(r'"X-CSRF-Token": "([^"]+)"', page.html)
        if match:
            self.token = match.group(1)
        return page

    async def post(
        self, path: str, data: dict[str, str] | None = None, *, htmx: bool = False
    ) -> Page:
        """Submits a form as the page would: its CSRF token, as a field or (htmx) a header."""
        if not self.token:
            await self.get("/login")
        fields = dict(data or {})
        headers = {"Origin": str(self.http.base_url).rstrip("/")}
        if htmx:
            headers |= {"HX-Request": "true", "X-CSRF-Token": self.token}
        else:
            fields.setdefault("csrf_token", self.token)
        return Page(await self.http.post(path, data=fields, headers=headers))

    async def sign_up(self, email: str, password: str = PASSWORD) -> Page:
        await self.get("/signup")
        page = await self.post("/signup", {"email": email, "password": password})
        assert page.status == 303, page.text
        return page
