"""The Gradio chat page of web.py in a real headless Chromium (selenium): type, watch the reply stream, clear."""

from __future__ import annotations

import shutil
import time

import pytest

from tests.test_web import chat_model_dir, endless_copy, serve

selenium = pytest.importorskip("selenium")

BROWSER = next(filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None)
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(BROWSER is None or DRIVER is None,
                                reason="no headless browser here: install chromium and chromium-driver")


@pytest.fixture(scope="module")
def page_url(tiny_model, tmp_path_factory):
    # a reply that cannot end early (min_new_tokens) so it is still streaming while the test watches it
    model = endless_copy(chat_model_dir(tiny_model), tmp_path_factory.mktemp("page") / "chat-model")
    with serve(model, "--max_new_tokens", "400") as url:
        yield url


@pytest.fixture()
def browser(tmp_path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = BROWSER
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
                f"--user-data-dir={tmp_path / 'chrome-profile'}", "--window-size=1280,900"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service(DRIVER))
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


def messages(driver, who: str) -> list[str]:
    """The texts of the user's or the bot's messages, read in one go (the page re-renders while streaming)."""
    return driver.execute_script(
        "return Array.from(document.querySelectorAll(arguments[0])).map(e => e.textContent.trim())",
        f'#chatbot [data-testid="{who}"]')


def health(url: str) -> dict:
    import httpx

    return httpx.get(f"{url}/health", trust_env=False, timeout=10).json()


def wait_for(condition, timeout: float = 30, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(every)
    raise AssertionError("timed out waiting for the page")


def test_type_stream_clear(browser, page_url):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(page_url)
    box = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#message textarea"))[0]
    box.send_keys("Tell me a story.", Keys.ENTER)
    assert wait_for(lambda: messages(browser, "user")) == ["Tell me a story."]

    # the reply grows in place while it is generated: a partial text, then a longer one that extends it
    seen: list[str] = []
    deadline = time.monotonic() + 40
    while time.monotonic() < deadline and len(seen) < 2:
        bots = messages(browser, "bot")
        if bots and bots[-1] and (not seen or bots[-1] != seen[-1]):
            seen.append(bots[-1])
        time.sleep(0.02)
    assert len(seen) == 2, f"no streaming seen: {seen}"
    assert seen[1].startswith(seen[0]) and len(seen[1]) > len(seen[0])

    browser.find_element(By.CSS_SELECTOR, "#clear").click()
    wait_for(lambda: not messages(browser, "user") and not messages(browser, "bot"))
    # Clear stopped the generation on the server too (it had hundreds of tokens to go)
    assert wait_for(lambda: health(page_url)["cancelled"] == 1, timeout=10)
    assert health(page_url)["finished"] == 0
    time.sleep(0.5)  # the cancelled reply does not come back
    assert messages(browser, "user") == [] and messages(browser, "bot") == []

    # the history state was cleared too: once the next reply is complete (the page then redraws the chat
    # from that state) the exchange stands alone
    box.send_keys("Hello again.", Keys.ENTER)
    assert wait_for(lambda: messages(browser, "user")) == ["Hello again."]
    wait_for(lambda: health(page_url)["finished"] == 1, timeout=60)
    time.sleep(0.5)
    assert messages(browser, "user") == ["Hello again."] and len(messages(browser, "bot")) == 1


def trash_icon(driver):
    """The Chatbot's own clear button (a trash icon in its corner), not the page's Clear button."""
    from selenium.webdriver.common.by import By

    found = driver.find_elements(By.CSS_SELECTOR, '#chatbot button[aria-label="Clear"], #chatbot button[title="Clear"]')
    if not found:
        labels = driver.execute_script("return Array.from(document.querySelectorAll('#chatbot button'))"
                                       ".map(b => b.getAttribute('aria-label') || b.title || b.textContent)")
        raise AssertionError(f"no trash icon among the chat's buttons: {labels}")
    return found[0]


def test_chat_trash_icon_clears_the_history(browser, page_url):
    """Issue 10: the chat's trash icon empties the display AND the history the next prompt is built from."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    browser.get(page_url)
    box = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#message textarea"))[0]
    finished = health(page_url)["finished"]
    box.send_keys("My name is Ada.", Keys.ENTER)
    assert wait_for(lambda: messages(browser, "user")) == ["My name is Ada."]
    wait_for(lambda: health(page_url)["finished"] == finished + 1, timeout=90)  # the reply is complete
    time.sleep(0.5)

    wait_for(lambda: trash_icon(browser)).click()
    wait_for(lambda: not messages(browser, "user") and not messages(browser, "bot"))
    box.send_keys("Hello again.", Keys.ENTER)
    assert wait_for(lambda: messages(browser, "user")) == ["Hello again."]
    wait_for(lambda: health(page_url)["finished"] == finished + 2, timeout=90)
    time.sleep(0.5)  # the page redraws the chat from the history state once the reply is complete
    assert messages(browser, "user") == ["Hello again."] and len(messages(browser, "bot")) == 1
