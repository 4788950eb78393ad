"""A real browser against a server with access control: CORS allow-list and the query token.

A page on its own origin creates a stream with ``fetch`` and an
``Authorization`` header (so the browser sends a preflight), then tails it
with ``EventSource`` and ``?access_token=`` (EventSource cannot send headers).
From an allowed origin both work; from an origin not on the list the
browser itself refuses to hand the page the answers. Chromium as in
tests/test_browser.py (whose driver and fixtures this reuses).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlencode

import pytest

from conftest import Server, deadline_poll, unique
from test_browser import WebDriver, browser, serving_page  # noqa: F401  (browser: the fixture)

WRITER = "writer-token-for-the-browser-test"
READER = "reader-token-for-the-browser-test"
RUN_TIMEOUT_S = 30.0

PAGE = """<!doctype html>
<meta charset="utf-8">
<script>
const p = new URLSearchParams(location.search);
window.result = {sseErrors: 0};
(async () => {
  try {
    const put = await fetch(p.get("stream"), {method: "PUT", body: "hello from the page",
      headers: {"content-type": "text/plain", "authorization": "Bearer " + p.get("writer")}});
    window.result.put = put.status;
  } catch (error) {
    window.result.put = "refused by the browser";
  }
  const source = new EventSource(p.get("stream") + "?offset=-1&live=sse&access_token=" + p.get("reader"));
  source.addEventListener("data", (event) => { window.result.data = event.data; source.close(); });
  source.onerror = () => {  // a CORS refusal closes it at once; anything else would retry
    window.result.sseErrors += 1;
    if (source.readyState === EventSource.CLOSED || window.result.sseErrors > 1) {
      window.result.sseGaveUp = true;
      source.close();
    }
  };
})();
</script>
"""


@pytest.fixture(scope="module")
def page_origin() -> Iterator[str]:
    with serving_page(PAGE) as origin:
        yield origin


def guarded_server(tmp_path: Path, allow_origins: str) -> Server:
    from trio_streams.auth.tokens import token_digest

    config = tmp_path / "auth.toml"
    config.write_text(f"""
auth_query_token = true
cors_allow_origins = "{allow_origins}"
[[auth.tokens]]
name = "writer"
sha256 = "{token_digest(WRITER)}"
scopes = ["write:browser/**"]
[[auth.tokens]]
name = "reader"
sha256 = "{token_digest(READER)}"
scopes = ["read:browser/**"]
""")
    data = tmp_path / "data"
    data.mkdir()
    return Server(data, ["--config", str(config)])


def run_page(driver: WebDriver, page_origin: str, stream_url: str) -> dict:
    driver.navigate(f"{page_origin}/page.html?" + urlencode({"stream": stream_url, "writer": WRITER, "reader": READER}))

    def finished() -> dict | None:
        result = driver.script("return window.result || null")
        done = isinstance(result, dict) and ("data" in result or result.get("sseGaveUp"))
        return result if done else None

    result = deadline_poll(finished, timeout=RUN_TIMEOUT_S, interval=0.05, what="the page's fetch and EventSource")
    assert isinstance(result, dict)
    return result


@pytest.mark.parametrize("allowed", [True, False], ids=["allowed-origin", "other-origin"])
def test_browser_page_with_tokens(browser: WebDriver, page_origin: str, tmp_path: Path, allowed: bool) -> None:  # noqa: F811
    server = guarded_server(tmp_path, page_origin if allowed else "https://elsewhere.example").start()
    try:
        stream_url = server.stream_url(unique("browser/page"))
        result = run_page(browser, page_origin, stream_url)
        if allowed:
            assert result["put"] == 201 and result["data"] == "hello from the page", result
        else:
            assert result["put"] == "refused by the browser" and "data" not in result, result
            assert result["sseGaveUp"], result
    finally:
        server.stop()
