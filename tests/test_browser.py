"""The page in a real headless Chromium (Debian's `chromium`, driven by Playwright's Python package)."""

import shutil
import socket
import threading
import time

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture
def server(tiny_model_dir):
    import uvicorn

    from convsum import serve
    from convsum.config import load_config
    from convsum.generate import load_summarizer

    cfg = load_config(None, {"model.name": str(tiny_model_dir), "generate.max_new_tokens": 8, "generate.bf16": "false"})
    s = load_summarizer(str(tiny_model_dir), cfg)
    app = serve.create_app({"fine-tuned": s, "base": s}, cfg)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(10)


def test_page_summarizes_in_headless_chromium(server, tmp_path):
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); .ci/run installs it")
    pw = pytest.importorskip("playwright.sync_api", reason="pip install playwright")
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--headless=new"])
        page = browser.new_page()
        page.goto(server)
        page.wait_for_function("document.querySelectorAll('#examples option').length > 1")
        page.fill("#dialogue", "#Person1#: Hello, I am Tom. I would like a ticket.\n#Person2#: Sure.")
        page.click("#go")
        page.wait_for_function(
            "[...document.querySelectorAll('.card .meta')].length == 2 && "
            "[...document.querySelectorAll('.card .meta')].every(e => e.textContent.includes('ms'))", timeout=30000)
        texts = page.locator(".card .summary").all_inner_texts()
        headers = page.locator(".card h2").all_inner_texts()
        page.screenshot(path=str(tmp_path / "page.png"), full_page=True)
        browser.close()
    assert [h.lower() for h in headers] == ["base", "fine-tuned"]
    assert all(t.strip() not in ("", "…", "(empty)") for t in texts), texts
