"""Drive the session viewer in headless Chromium: sign in with a token, open
a running session, see its steps appear live, take a screenshot.

Usage: viewer.py BASE_URL TOKEN SESSION_ID SCREENSHOT.png
Prints one JSON line: the record counts seen and what the page showed.
"""
import json
import sys
import tempfile
import time

from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

base, token, session_id, shot = sys.argv[1:5]
options = Options()
options.binary_location = "/usr/bin/chromium"
profile = tempfile.mkdtemp()
for arg in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--window-size=1280,1000", f"--user-data-dir={profile}"]:
    options.add_argument(arg)
driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
try:
    wait = WebDriverWait(driver, 30, poll_frequency=0.05)
    driver.get(base + "/")
    driver.find_element(By.ID, "token").send_keys(token)
    driver.find_element(By.ID, "load").click()
    row = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, f'.session[data-id="{session_id}"]'))
    row.click()
    records = lambda d: d.find_elements(By.CSS_SELECTOR, "#timeline .record")
    wait.until(lambda d: len(records(d)) >= 2)
    first = len(records(driver))
    ended_at_first = bool(driver.find_elements(By.CSS_SELECTOR, "#timeline .record.session_ended"))
    # The session is still running: more steps arrive without a reload.
    wait.until(lambda d: len(records(d)) > first + 3)
    later = len(records(driver))
    wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, "#timeline .record.session_ended"))
    wait.until(lambda d: "completed" in d.find_element(By.ID, "header").text)
    time.sleep(0.3)
    driver.save_screenshot(shot)
    print(json.dumps({
        "first": first,
        "ended_at_first": ended_at_first,
        "later": later,
        "final": len(records(driver)),
        "kinds": sorted({e.get_attribute("class").split()[1] for e in records(driver)}),
        "header": driver.find_element(By.ID, "header").text,
        "chart_paths": len(driver.find_elements(By.CSS_SELECTOR, "#chart path")),
    }))
finally:
    driver.quit()
