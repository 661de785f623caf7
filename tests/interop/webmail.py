#!/usr/bin/env python3
"""The webmail and the console in a real browser: headless Chromium (Debian's
chromium and chromium-driver) driven by Selenium, against the real daemon on
loopback. Called by tests/web.rs, which starts the daemon, delivers the
messages named below over SMTP and checks afterwards what only it can see
(the remote sink, the queue).

Chromium resolves no host name (every URL is 127.0.0.1) and runs without
background networking. A tiny HTTP server on 127.0.0.1 stands for a
tracking pixel: it must see no request until the reader asks for images.
"""
import argparse
import imaplib
import os
import smtplib
import ssl
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.expected_conditions import staleness_of
from selenium.webdriver.support.ui import Select

sys.path.insert(0, os.path.dirname(__file__))
from scenarios import check, summary  # noqa: E402

p = argparse.ArgumentParser()
p.add_argument("--web", type=int, required=True)
p.add_argument("--smtp", type=int, required=True)
p.add_argument("--imap", type=int, required=True)
p.add_argument("--password", required=True)
p.add_argument("--tracker", type=int, required=True)
p.add_argument("--queued", required=True, help="queue id of a deferred message from spammer@bad.test")
p.add_argument("--attachment", required=True, help="file whose bytes the delivered attachment holds")
p.add_argument("--shots", required=True, help="directory for the screenshots")
p.add_argument("--petrel")
p.add_argument("--config")
args = p.parse_args()

BASE = f"http://127.0.0.1:{args.web}"
os.makedirs(args.shots, exist_ok=True)

hits = []


class Tracker(BaseHTTPRequestHandler):
    def do_GET(self):
        hits.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "image/gif")
        self.end_headers()
        self.wfile.write(b"GIF89a\x01\x00\x01\x00\x00\x00\x00;")

    def log_message(self, *a):
        pass


tracker = ThreadingHTTPServer(("127.0.0.1", args.tracker), Tracker)
threading.Thread(target=tracker.serve_forever, daemon=True).start()


def browser(javascript=True, width=1280, height=900):
    o = webdriver.ChromeOptions()
    o.binary_location = "/usr/bin/chromium"
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
              "--no-first-run", "--disable-background-networking", "--disable-component-update",
              "--disable-sync", "--disable-default-apps", "--no-proxy-server",
              "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
              f"--window-size={width},{height}"):
        o.add_argument(a)
    if not javascript:
        o.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    d = webdriver.Chrome(service=Service(executable_path="/usr/bin/chromedriver"), options=o)
    d.set_page_load_timeout(30)
    return d


def wait(cond, limit=10.0, what="condition"):
    end = time.time() + limit
    while time.time() < end:
        try:
            v = cond()
            if v:
                return v
        except Exception:  # the page may be between loads
            pass
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def click_and_load(d, element):
    """Clicks something that loads a new page, and waits for it."""
    old = d.find_element(By.TAG_NAME, "html")
    element.click()
    wait(lambda: staleness_of(old)(d), what="the next page")
    wait(lambda: d.execute_script("return document.readyState") == "complete", what="the page loaded")


def shot(d, name):
    d.save_screenshot(os.path.join(args.shots, f"{name}.png"))


def login(d, user, password):
    d.get(BASE + "/login")
    d.find_element(By.ID, "username").send_keys(user)
    d.find_element(By.ID, "password").send_keys(password)
    d.find_element(By.ID, "login").click()
    wait(lambda: d.current_url.rstrip("/") == BASE or "/?" in d.current_url, what="the mailbox after login")


def row_with(d, text):
    for r in d.find_elements(By.CSS_SELECTOR, "table.messages tbody tr"):
        if text in r.text:
            return r
    return None


def open_message(d, subject):
    r = wait(lambda: row_with(d, subject), what=f"a row with {subject!r}")
    r.find_element(By.CSS_SELECTOR, "a.subject").click()
    try:
        wait(lambda: d.find_element(By.ID, "subject").text == subject, what="the message page")
    except AssertionError:
        shot(d, "failed-open")
        raise AssertionError(f"no page for {subject!r}: at {d.current_url}, title {d.title!r}")


d = browser()
try:
    def wrong_password_refused():
        d.get(BASE + "/login")
        d.find_element(By.ID, "username").send_keys("alice")
        d.find_element(By.ID, "password").send_keys("not it")
        d.find_element(By.ID, "login").click()
        err = wait(lambda: d.find_element(By.CSS_SELECTOR, "p.error"), what="the login error")
        assert "not right" in err.text, err.text
        shot(d, "login")

    check("a wrong password is refused with a message", wrong_password_refused)

    def logs_in_and_lists():
        login(d, "alice", args.password)
        assert row_with(d, "Plain hello"), d.page_source[:2000]
        assert row_with(d, "HTML with a script"), "the HTML message is listed"
        # UTF-8 subject and name, decoded from RFC 2047.
        r = row_with(d, "Grüße aus Köln")
        assert r is not None and "Zoë Müller" in r.text, r.text if r else d.page_source[:2000]
        cookies = {c["name"]: c for c in d.get_cookies()}
        c = cookies["petrel_session"]
        assert c["httpOnly"] and c.get("sameSite") == "Strict", c
        count = d.find_element(By.CSS_SELECTOR, "nav.folders li.current .count").text
        assert int(count) >= 3, count
        shot(d, "message-list")

    check("alice logs in and sees her messages, UTF-8 names and unread count", logs_in_and_lists)

    def reads_plain():
        open_message(d, "Plain hello")
        body = d.find_element(By.ID, "body").text
        assert "first line of a plain message" in body, body
        shot(d, "read-plain")

    check("a message delivered over SMTP is read", reads_plain)

    def reply():
        d.find_element(By.ID, "reply").click()
        to = wait(lambda: d.find_element(By.ID, "cto"), what="the reply form")
        assert "someone@partner.test" in to.get_attribute("value"), to.get_attribute("value")
        assert d.find_element(By.ID, "subject").get_attribute("value") == "Re: Plain hello"
        text = d.find_element(By.ID, "text").get_attribute("value")
        assert "> first line of a plain message" in text, text
        d.find_element(By.ID, "text").send_keys("\nThanks.")
        d.find_element(By.ID, "send").click()
        wait(lambda: "Message sent" in d.find_element(By.CSS_SELECTOR, "p.notice").text, what="the sent notice")

    check("reply: the form is filled in, the reply is sent", reply)

    def mark_unread():
        d.get(BASE + "/")
        open_message(d, "Plain hello")
        d.find_element(By.XPATH, "//button[@value='unread']").click()
        r = wait(lambda: row_with(d, "Plain hello"), what="the list after mark unread")
        assert "unread" in r.get_attribute("class"), r.get_attribute("class")

    check("mark a read message unread", mark_unread)

    def shared_mailbox():
        d.get(BASE + "/")
        d.find_element(By.CSS_SELECTOR, "nav.folders a[data-folder='Shared/support']").click()
        wait(lambda: row_with(d, "for support"), what="the shared mailbox's message")

    check("a mail-in mailbox is open to its reader", shared_mailbox)

    def html_is_safe():
        d.get(BASE + "/")
        open_message(d, "HTML with a script")
        body = d.find_element(By.ID, "body")
        assert "Bold words" in body.text, body.text
        assert d.title.startswith("HTML with a script"), f"a script ran: title {d.title!r}"
        assert d.execute_script("return window.pwned === undefined"), "inline script ran"
        assert not body.find_elements(By.TAG_NAME, "script")
        assert not body.find_elements(By.TAG_NAME, "form"), "forms removed"
        time.sleep(0.5)
        assert hits == [], f"remote image fetched before asking: {hits}"
        assert d.find_element(By.ID, "blocked").is_displayed()
        links = body.find_elements(By.TAG_NAME, "a")
        assert links and all("noreferrer" in (a.get_attribute("rel") or "") for a in links)
        shot(d, "read-html")
        # The positive control: asked for, the image loads.
        d.find_element(By.ID, "show-images").click()
        wait(lambda: hits, what="the remote image once asked for")

    check("HTML mail: no script runs, no remote image loads until asked", html_is_safe)

    def downloads_attachment():
        dl = tempfile.mkdtemp(prefix="petrel-dl.")
        d.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": dl})
        d.get(BASE + "/")
        open_message(d, "HTML with a script")
        a = d.find_element(By.CSS_SELECTOR, "a.attachment")
        assert a.text == "Résumé €.bin", a.text
        a.click()
        path = os.path.join(dl, "Résumé €.bin")
        wait(lambda: os.path.exists(path) and not any(f.endswith(".crdownload") for f in os.listdir(dl)),
             what=f"the download in {dl}: {os.listdir(dl)}")
        want = open(args.attachment, "rb").read()
        got = open(path, "rb").read()
        assert got == want, f"{len(got)} octets, want {len(want)}"

    check("an attachment downloads byte-exact under its decoded name", downloads_attachment)

    def new_mail_without_reload():
        d.get(BASE + "/")
        marker = f"Arrived while watching {time.time():.0f}"
        before = d.execute_script("return performance.timeOrigin")
        s = smtplib.SMTP("127.0.0.1", args.smtp)
        s.sendmail("news@partner.test", ["alice@example.test"],
                   f"From: news@partner.test\r\nTo: alice@example.test\r\nSubject: {marker}\r\n\r\nhi\r\n")
        s.quit()
        wait(lambda: row_with(d, marker), limit=10, what="the new message in the list")
        # The page reloaded itself (server-sent event), nobody pressed F5.
        after = d.execute_script("return performance.timeOrigin")
        assert after != before

    check("new mail appears without a reload", new_mail_without_reload)

    def compose_and_send():
        d.get(BASE + "/compose")
        d.find_element(By.ID, "cto").send_keys("bob@example.test, someone@partner.test")
        d.find_element(By.ID, "subject").send_keys("Sent from the web — ünïcode")
        d.find_element(By.ID, "text").send_keys("Hello Bob,\nthis came from the browser.\n")
        d.find_element(By.ID, "files").send_keys(os.path.abspath(args.attachment))
        shot(d, "compose")
        d.find_element(By.ID, "send").click()
        wait(lambda: "Message sent" in d.find_element(By.CSS_SELECTOR, "p.notice").text, what="the sent notice")
        d.get(BASE + "/?f=Sent")
        wait(lambda: row_with(d, "Sent from the web — ünïcode"), what="the message in Sent")

    check("compose with an attachment to a local and a remote user; filed in Sent", compose_and_send)

    def forward():
        d.get(BASE + "/")
        open_message(d, "Grüße aus Köln")
        d.find_element(By.ID, "forward").click()
        wait(lambda: d.find_element(By.ID, "subject").get_attribute("value") == "Fwd: Grüße aus Köln",
             what="the forward form")
        d.find_element(By.ID, "cto").send_keys("someone@partner.test")
        d.find_element(By.ID, "send").click()
        wait(lambda: "Message sent" in d.find_element(By.CSS_SELECTOR, "p.notice").text, what="the sent notice")

    check("forward: the original goes along", forward)

    def draft():
        d.get(BASE + "/compose")
        d.find_element(By.ID, "subject").send_keys("Unfinished thoughts")
        d.find_element(By.ID, "text").send_keys("to be continued")
        d.find_element(By.ID, "draft").click()
        wait(lambda: "Draft saved" in d.find_element(By.CSS_SELECTOR, "p.notice").text, what="the draft notice")
        assert row_with(d, "Unfinished thoughts"), "the draft is in Drafts"

    check("a draft is saved to Drafts", draft)

    def bob_sees_it_over_imap():
        def found():
            m = imaplib.IMAP4("127.0.0.1", args.imap)
            m.starttls(ssl._create_unverified_context())
            m.login("bob", args.password)
            m.select("INBOX")
            typ, data = m.search("UTF-8", "SUBJECT", "browser".encode())
            m.logout()
            return typ == "OK" and data[0].split()
        # SUBJECT searches the subject; the body says "browser": search TEXT.
        def found_text():
            m = imaplib.IMAP4("127.0.0.1", args.imap)
            m.starttls(ssl._create_unverified_context())
            m.login("bob", args.password)
            m.select("INBOX")
            typ, data = m.search(None, "TEXT", "browser")
            m.logout()
            return typ == "OK" and data[0].split()
        wait(found_text, limit=15, what="the message in bob's INBOX over IMAP")
        assert not found(), "SUBJECT matched the body"

    check("the local recipient reads it over IMAP", bob_sees_it_over_imap)

    def move_and_delete():
        d.get(BASE + "/")
        r = wait(lambda: row_with(d, "Plain hello"), what="the plain message")
        r.find_element(By.CSS_SELECTOR, "input[type=checkbox]").click()
        Select(d.find_element(By.ID, "to")).select_by_visible_text("Archive")
        d.find_element(By.ID, "move").click()
        wait(lambda: "Moved" in d.find_element(By.CSS_SELECTOR, "p.notice").text, what="moved")
        assert row_with(d, "Plain hello") is None
        d.get(BASE + "/?f=Archive")
        r = wait(lambda: row_with(d, "Plain hello"), what="the message in Archive")
        r.find_element(By.CSS_SELECTOR, "input[type=checkbox]").click()
        d.find_element(By.ID, "delete").click()
        wait(lambda: "Deleted" in d.find_element(By.CSS_SELECTOR, "p.notice").text, what="deleted")
        d.get(BASE + "/?f=Trash")
        wait(lambda: row_with(d, "Plain hello"), what="the message in Trash")
        d.find_element(By.ID, "empty").click()
        wait(lambda: "emptied" in d.find_element(By.CSS_SELECTOR, "p.notice").text, what="emptied")
        assert row_with(d, "Plain hello") is None

    check("move to Archive, delete to Trash, empty Trash", move_and_delete)

    def sort_and_search():
        d.get(BASE + "/?f=INBOX&sort=subject&order=asc")
        subjects = [e.text for e in d.find_elements(By.CSS_SELECTOR, "a.subject")]
        assert subjects == sorted(subjects, key=str.lower), subjects
        d.get(BASE + "/")
        q = d.find_element(By.ID, "q")
        q.send_keys("Köln")
        q.submit()
        wait(lambda: "found" in d.find_element(By.CSS_SELECTOR, "h1 small").text, what="search results")
        subjects = [e.text for e in d.find_elements(By.CSS_SELECTOR, "a.subject")]
        assert subjects == ["Grüße aus Köln"], subjects

    check("sorting by subject and searching", sort_and_search)

    def console_hold_release_delete():
        d.get(BASE + "/admin")
        shot(d, "console-overview")
        d.get(BASE + "/admin/queue")
        row = lambda: d.find_element(By.CSS_SELECTOR, f"tr[data-id='{args.queued}']")
        wait(row, what="the queued message in the console")
        shot(d, "console-queue")
        for op, state in (("hold", "hold"), ("release", None)):
            row().find_element(By.CSS_SELECTOR, "input[type=checkbox]").click()
            click_and_load(d, d.find_element(By.ID, op))
            wait(lambda: d.find_element(By.ID, "notice"), what=f"{op} done")
            st = wait(row, what="the row after " + op).find_element(By.CSS_SELECTOR, "td.state").text
            assert (st == state) if state else (st != "hold"), f"after {op}: {st}"
        d.get(BASE + f"/admin/message?id={args.queued}")
        assert "spammer@bad.test" in d.find_element(By.ID, "msg-sender").text
        assert "Connection refused" in d.page_source or "connect" in d.page_source, "the last error"
        shot(d, "console-message")
        d.find_element(By.ID, "show-body").click()
        assert "cheap" in wait(lambda: d.find_element(By.ID, "qbody")).text
        click_and_load(d, d.find_element(By.ID, "deny-sender"))
        wait(lambda: "deny list" in d.find_element(By.ID, "notice").text, what="the deny notice")
        s = smtplib.SMTP("127.0.0.1", args.smtp)
        s.ehlo("spam.test")
        code, text = s.mail("spammer@bad.test")
        s.quit()
        assert code == 550 and b"5.7.1" in text, (code, text)
        d.get(BASE + "/admin/deny")
        t = d.find_element(By.ID, "deny-list").text
        assert "spammer@bad.test" in t and "alice" in t, t
        shot(d, "console-deny")
        d.get(BASE + "/admin/queue")
        wait(row, what="the row before delete").find_element(By.CSS_SELECTOR, "input[type=checkbox]").click()
        click_and_load(d, d.find_element(By.ID, "qdelete"))
        wait(lambda: d.find_element(By.ID, "notice"), what="delete done")
        assert not d.find_elements(By.CSS_SELECTOR, f"tr[data-id='{args.queued}']")

    check("console: hold, release, deny the sender in one click, delete", console_hold_release_delete)

    def phone_width():
        # Headless windows are at least 500 px wide: emulate the phone.
        d.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                          {"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
        d.get(BASE + "/")
        nav = d.find_element(By.CSS_SELECTOR, "nav.folders").rect
        table = d.find_element(By.CSS_SELECTOR, "table.messages").rect
        assert nav["y"] + nav["height"] <= table["y"] + 1, (nav, table)
        width = d.execute_script("return document.documentElement.scrollWidth")
        assert width <= 390, f"page {width}px wide at 390"
        shot(d, "phone")
        d.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})

    check("the layout works at phone width", phone_width)

    def keyboard():
        d.get(BASE + "/")
        body = d.find_element(By.TAG_NAME, "body")
        from selenium.webdriver.common.keys import Keys
        body.send_keys(Keys.TAB)
        first = d.switch_to.active_element
        assert first.get_attribute("class") == "skip", first.get_attribute("outerHTML")
        first.send_keys(Keys.ENTER)
        assert d.current_url.endswith("#main")

    check("keyboard: a skip link first", keyboard)

    def logout_and_forbidden():
        d.find_element(By.ID, "logout").click()
        wait(lambda: "/login" in d.current_url, what="the login page after logout")
        d.get(BASE + "/")
        assert "/login" in d.current_url, "the session ended"
        login(d, "bob", args.password)
        d.get(BASE + "/admin")
        assert d.find_element(By.TAG_NAME, "h1").text == "403", d.page_source[:500]
        assert not d.find_elements(By.ID, "console"), "no console link for bob"
        d.get(BASE + "/read?f=INBOX&uid=1")
        assert "Sent from the web" in d.find_element(By.ID, "subject").text
        # alice's folder names reach nothing of alice's.
        d.get(BASE + "/?f=Shared/support")
        assert d.find_element(By.TAG_NAME, "h1").text == "404"

    check("logout ends the session; bob gets 403 on the console, 404 on others' mail", logout_and_forbidden)
finally:
    d.quit()

nojs = browser(javascript=False)
try:
    def reads_without_javascript():
        login(nojs, "bob", args.password)
        open_message(nojs, "Sent from the web — ünïcode")
        assert "this came from the browser" in nojs.find_element(By.ID, "body").text

    check("reading works without JavaScript", reads_without_javascript)
finally:
    nojs.quit()
    tracker.shutdown()

sys.exit(summary())
