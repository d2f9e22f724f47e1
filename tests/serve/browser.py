"""gptpipe serve's page and API in a real browser: Debian's chromium, driven by Playwright
(tests/serve/browser.rs runs it). Playwright's own browsers are not used (nor downloaded).

Usage: browser.py PORT MODEL SCREENSHOT_PNG
"""

import http.server
import json
import sys
import tempfile
import threading
import time
import urllib.parse

from playwright.sync_api import sync_playwright

port, model, screenshot = sys.argv[1], sys.argv[2], sys.argv[3]
base = f"http://127.0.0.1:{port}"
CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def check(cond, what):
    if not cond:
        raise AssertionError(what)


# A page of another origin (another port) calling the API as gpt-2-cloud-run's api_ui.html
# does: jQuery's $.ajax({type: "POST", url, dataType: "json", data: JSON.stringify(inputs)})
# with every form field as a string, which jQuery sends as a form (x-www-form-urlencoded).
CLOUD_RUN_PAGE = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>cloud-run client</title></head>
<body><pre id="out">waiting</pre>
<script>
const inputs = {"prefix": "The fox", "length": "20", "temperature": "0.7", "top_k": "40"};
const xhr = new XMLHttpRequest();
xhr.open("POST", new URLSearchParams(location.search).get("api"));
xhr.setRequestHeader("Content-Type", "application/x-www-form-urlencoded; charset=UTF-8");
xhr.responseType = "json";
xhr.onload = () => {
  document.getElementById("out").textContent =
    JSON.stringify({status: xhr.status, response: xhr.response});
};
xhr.onerror = () => { document.getElementById("out").textContent = "network error (CORS?)"; };
xhr.send(JSON.stringify(inputs));
</script></body></html>
"""


class Origin(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = CLOUD_RUN_PAGE.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


other = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Origin)
threading.Thread(target=other.serve_forever, daemon=True).start()
other_origin = f"http://127.0.0.1:{other.server_address[1]}"

requests = []
with tempfile.TemporaryDirectory() as profile, sync_playwright() as p:
    context = p.chromium.launch_persistent_context(
        profile, executable_path=CHROMIUM, args=ARGS, headless=True,
        viewport={"width": 1100, "height": 760},
    )
    context.on("request", lambda r: requests.append(r.url))
    page = context.new_page()
    page.set_default_timeout(60_000)
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    # The page: the model's name, the attribution, the stage's defaults in the inputs.
    page.goto(base + "/")
    check(page.locator("#model-name").inner_text() == model, page.locator("#model-name").inner_text())
    footer = page.locator("#attribution")
    check(footer.is_visible(), "no attribution footer")
    check(model in footer.inner_text() and "gptpipe" in footer.inner_text(), footer.inner_text())
    check(page.input_value("#length") == "60", page.input_value("#length"))
    check(page.input_value("#top_k") == "20", page.input_value("#top_k"))
    check(page.input_value("#temperature") == "0.9", page.input_value("#temperature"))

    # Every change of an alternative's text, as the server-sent events arrive: the length
    # of each text node the page puts in (`.text` gets `textContent += chunk`).
    page.evaluate("""() => {
        window.growth = [];
        new MutationObserver((records) => {
            for (const r of records) {
                const alt = r.target.closest && r.target.closest(".alt");
                if (!alt || alt.dataset.index !== "0" || !r.target.classList.contains("text")) continue;
                for (const n of r.addedNodes) window.growth.push(n.textContent.length);
            }
        }).observe(document.getElementById("alternatives"), {subtree: true, childList: true, characterData: true});
    }""")

    prompt = "The fox number"
    page.fill("#prompt", prompt)
    page.fill("#n", "3")
    page.click("#continue")
    # Poll the first alternative while it is written; generation on this tiny model may be
    # faster than the polls, so the observer above records every step too.
    polled = []
    deadline = time.time() + 60
    while time.time() < deadline:
        polled.append(len(page.locator('.alt[data-index="0"] .text').inner_text()))
        if page.locator("#continue").is_enabled():
            break
        time.sleep(0.01)
    page.wait_for_function("() => !document.getElementById('continue').disabled")
    growth = page.evaluate("window.growth")
    print("polled lengths:", polled)
    print("observed lengths:", growth)
    # (The last event, with the finish reason, adds an empty text.)
    check(len(set(growth)) >= 5, f"the text arrived in {len(set(growth))} steps, not streamed: {growth}")
    check(all(a <= b for a, b in zip(growth, growth[1:])), f"the text did not only grow: {growth}")
    cards = page.locator(".alt")
    check(cards.count() == 3, f"{cards.count()} alternatives, not 3")
    texts = [cards.nth(i).locator(".text").inner_text() for i in range(3)]
    states = [cards.nth(i).locator(".state").inner_text() for i in range(3)]
    check(all(texts), f"an empty alternative: {texts}")
    check(not any("writing" in s or "stopped" in s for s in states), f"states {states}")
    check(not page.locator(".error").count(), page.locator(".error").all_inner_texts())
    print("alternatives:", texts, states)
    page.screenshot(path=screenshot, full_page=True)

    # Ctrl+Enter in the textarea asks again: new alternatives replace these.
    page.evaluate("() => document.querySelectorAll('.alt').forEach(a => a.dataset.old = '1')")
    page.focus("#prompt")
    page.keyboard.press("Control+Enter")
    page.wait_for_function(
        "() => document.querySelectorAll('.alt').length === 3"
        " && !document.querySelector('.alt[data-old]')"
        " && !document.getElementById('continue').disabled"
    )
    again = [cards.nth(i).locator(".text").inner_text() for i in range(3)]
    check(all(again), f"Ctrl+Enter gave empty alternatives: {again}")
    print("after Ctrl+Enter:", again)

    # Clicking an alternative appends it to the text and clears the alternatives.
    cards.nth(1).click()
    check(page.input_value("#prompt") == prompt + again[1], page.input_value("#prompt"))
    check(cards.count() == 0, "the alternatives stayed after keeping one")
    check(not errors, f"errors on the page: {errors}")

    # gpt-2-cloud-run's kind of client, from another origin: the answer crosses (CORS).
    cross = context.new_page()
    cross.goto(f"{other_origin}/?api={urllib.parse.quote(base + '/')}")
    cross.wait_for_function("() => document.getElementById('out').textContent !== 'waiting'")
    out = cross.locator("#out").inner_text()
    print("cross-origin:", out)
    check(out.startswith("{"), f"the cross-origin request failed: {out}")
    answer = json.loads(out)
    check(answer["status"] == 200, answer)
    check(list(answer["response"]) == ["text"], answer)
    check(answer["response"]["text"].startswith("The fox"), answer)

    context.close()

other.shutdown()
outside = [u for u in requests if not u.startswith(("http://127.0.0.1:", "data:", "about:"))]
print("requests:", requests)
check(requests, "no requests were recorded")
check(not outside, f"requests left the machine: {outside}")
print("ok")
