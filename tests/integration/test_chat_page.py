"""The chat page at / in headless Chromium: type a message, send it, watch the streamed answer arrive.

Needs Debian's chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver) and selenium; skips without.
"""

from __future__ import annotations

import shutil
import time

import httpx
import pytest
from serve_helpers import serving
from test_serve import HELLO, llamacpp_engine, tiny_gguf  # noqa: F401  (fixtures)

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
DRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"

pytestmark = [
    pytest.mark.skipif(not shutil.which(CHROMIUM), reason="needs Debian's chromium (apt-get install chromium)"),
    pytest.mark.skipif(not shutil.which(DRIVER), reason="needs chromium-driver (apt-get install chromium-driver)"),
]
webdriver = pytest.importorskip("selenium.webdriver", reason="needs selenium (pip install selenium)")


@pytest.fixture
def browser(tmp_path):
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    options = Options()
    options.binary_location = CHROMIUM
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'chromium-profile'}"):  # fmt: skip
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def wait_for(predicate, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out waiting in the browser")


def send(browser, text: str, temperature: str, max_tokens: str) -> None:
    from selenium.webdriver.common.by import By

    for field, value in (("temperature", temperature), ("max_tokens", max_tokens)):
        box = browser.find_element(By.ID, field)
        box.clear()
        box.send_keys(value)
    browser.find_element(By.ID, "input").send_keys(text)
    browser.find_element(By.ID, "send").click()


def answers(browser) -> list[str]:
    return browser.execute_script(
        "return [...document.querySelectorAll('.msg.assistant[data-done=true]')].map(e => e.textContent)"
    )


def test_type_send_and_see_the_streamed_answer(browser, llamacpp_engine, tmp_path):  # noqa: F811
    with serving(llamacpp_engine, tmp_path) as url:
        expected = httpx.post(url + "/v1/chat/completions",
                              json={"messages": HELLO, "temperature": 0, "max_tokens": 8}).json()  # fmt: skip
        expected = expected["choices"][0]["message"]["content"]
        browser.get(url + "/")
        wait_for(lambda: browser.execute_script("return document.getElementById('model').textContent") == "tiny-gguf")
        send(browser, HELLO[0]["content"], "0", "8")
        assert wait_for(lambda: answers(browser)) == [expected]
        assert expected  # the greedy answer of the tiny model is not empty
        # the page streamed it: the server counted a time to first token for the page's request
        metrics = httpx.get(url + "/metrics").text
        assert 'llmforge_requests_total{route="/v1/chat/completions",code="200"} 2' in metrics
        # history lives in the browser and survives a reload
        browser.refresh()
        roles = wait_for(lambda: browser.execute_script(
            "return [...document.querySelectorAll('.msg')].map(e => e.classList[1])"))  # fmt: skip
        assert roles == ["user", "assistant"]
        stored = browser.execute_script("return JSON.parse(localStorage.getItem('llmforge.chat.history'))")
        assert stored[1].pop("id").startswith("chatcmpl-")  # the answer's id, for feedback on it
        assert stored == [{"role": "user", "content": HELLO[0]["content"]}, {"role": "assistant", "content": expected}]


def test_page_asks_for_the_key_when_the_server_has_one(browser, llamacpp_engine, tmp_path):  # noqa: F811
    from selenium.webdriver.common.by import By

    with serving(llamacpp_engine, tmp_path, "serve.api_key=sk-page-key") as url:
        browser.get(url + "/")
        keybar = browser.find_element(By.ID, "keybar")
        wait_for(lambda: keybar.is_displayed())
        browser.find_element(By.ID, "apikey").send_keys("sk-page-key")
        browser.find_element(By.ID, "savekey").click()
        wait_for(lambda: not keybar.is_displayed())
        send(browser, "hi", "0", "4")
        assert len(wait_for(lambda: answers(browser))) == 1


def test_page_shows_the_sources_under_the_answer(browser, llamacpp_engine, tmp_path):  # noqa: F811
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "ollama.md").write_text("# Ollama\n\nDeploy to Ollama with llmforge deploy ollama.\n")
    (docs / "lora.txt").write_text("LoRA rank eight is a fine start.\n")
    sets = ("serve.retrieval.enabled=true", f"serve.retrieval.docs={docs}", "serve.retrieval.top_k=1")
    with serving(llamacpp_engine, tmp_path, *sets) as url:
        browser.get(url + "/")
        wait_for(lambda: browser.execute_script("return document.getElementById('model').textContent") == "tiny-gguf")
        send(browser, "how do I deploy to ollama", "0", "4")
        assert len(wait_for(lambda: answers(browser))) == 1
        listed = "return [...document.querySelectorAll('.sources li')].map(e => [e.textContent, e.title])"
        assert browser.execute_script(listed) == [["ollama.md:1-3", "# Ollama\n\nDeploy to Ollama with llmforge "
                                                                    "deploy ollama."]]  # fmt: skip
        # the sources stay with their answer across a reload; the next answer lists its own
        browser.refresh()
        assert wait_for(lambda: browser.execute_script(listed)) == [[
            "ollama.md:1-3", "# Ollama\n\nDeploy to Ollama with llmforge deploy ollama."]]  # fmt: skip
        send(browser, "and lora?", "0", "4")
        assert len(wait_for(lambda: answers(browser))) == 1  # the new answer (redrawn ones are not marked done)
        lists = "return [...document.querySelectorAll('.sources')].map(l => [...l.children].map(e => e.textContent))"
        assert browser.execute_script(lists) == [["ollama.md:1-3"], ["lora.txt:1"]]


def test_thumbs_under_an_answer_send_feedback_on_it(browser, llamacpp_engine, tmp_path):  # noqa: F811
    import json

    from selenium.webdriver.common.by import By

    def pressed() -> list[str]:
        return browser.execute_script("return [...document.querySelectorAll('.feedback button')]"
                                      ".map(b => b.dataset.feedback + ':' + b.getAttribute('aria-pressed'))")  # fmt: skip

    def note() -> str:
        return browser.execute_script("const n = document.querySelector('.feedback .note'); return n && n.textContent")

    with serving(llamacpp_engine, tmp_path, "serve.log_conversations=true", "serve.api_key=sk-k") as url:
        browser.get(url + "/")
        browser.execute_script("localStorage.setItem('llmforge.chat.key', 'sk-k')")  # the key: /v1/feedback needs it
        browser.refresh()
        send(browser, "hi", "0", "4")
        assert len(wait_for(lambda: answers(browser))) == 1
        assert pressed() == ["up:false", "down:false"]
        browser.find_element(By.CSS_SELECTOR, ".feedback button[data-feedback=down]").click()
        assert wait_for(note) == "thanks" and pressed() == ["up:false", "down:true"]
        browser.find_element(By.CSS_SELECTOR, ".feedback button[data-feedback=up]").click()  # second thoughts
        wait_for(lambda: pressed() == ["up:true", "down:false"])
        (logged,) = [json.loads(line) for line in (tmp_path / "serve" / "conversations" / "conversations.jsonl").open()]
        feedback = [json.loads(line) for line in (tmp_path / "serve" / "feedback" / "feedback.jsonl").open()]
        assert [(f["id"], f["feedback"]) for f in feedback] == [(logged["metadata"]["id"], "down"),
                                                                (logged["metadata"]["id"], "up")]  # fmt: skip
        assert (
            'llmforge_feedback_total{feedback="up"} 1'
            in httpx.get(url + "/metrics", headers={"Authorization": "Bearer sk-k"}).text
        )
        browser.refresh()  # the thumb stays with its answer
        assert wait_for(lambda: pressed() == ["up:true", "down:false"])

    with serving(llamacpp_engine, tmp_path / "off") as url:  # no conversation log: the page says why nothing counts
        browser.get(url + "/")
        browser.execute_script("localStorage.clear()")
        browser.refresh()
        send(browser, "hi", "0", "4")
        assert len(wait_for(lambda: answers(browser))) == 1
        browser.find_element(By.CSS_SELECTOR, ".feedback button[data-feedback=up]").click()
        assert "serve.log_conversations" in wait_for(note)
