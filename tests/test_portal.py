"""The portal at /ui: a real server on a real port, a trained tiny version, and a real headless Chromium.

The HTTP-level tests pin the session rules (signed HttpOnly SameSite cookie, CSRF on every form, no open
redirect, a revoked token ends its session); the browser tests sign in, read the adapters and a version's
lineage and evaluation, and save a screenshot of each page at 1280x800 into docs/screenshots/.
"""

from __future__ import annotations

import html
import os
import re
import shutil
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import TINY_BASE

from registry import Registry
from registry.errors import NotFound
from server.app import create_server, shutdown
from server.jobs_service import JobHooks
from server.options import ServerOptions
from server.tokens import create_token

ROOT = Path(__file__).resolve().parent.parent
ARITH = ROOT / "examples" / "arith.jsonl"
SCREENSHOTS = ROOT / "docs" / "screenshots"


@pytest.fixture(scope="module")
def portal(tmp_path_factory, tiny_base_dir):
    """A server with the HTTP port on, tokens required, over a registry holding one trained version (tiny-arith:1)."""
    from trainer.config import form_fields, load_config
    from trainer.heldout import held_out_probes
    from trainer.jobs.submit import check_dataset, plan_submission, preview_dataset, submit
    from trainer.train import train

    tmp = tmp_path_factory.mktemp("portal")
    registry = Registry(tmp / "home")
    registry.add_base(str(tiny_base_dir), TINY_BASE)
    config = {
        "base_model": TINY_BASE, "adapter": "lora", "lora_r": 4, "lora_alpha": 8, "lora_dropout": 0.0,
        "datasets": [{"path": str(ARITH), "type": "alpaca"}], "val_set_size": 8, "sequence_len": 48, "micro_batch_size": 4,
        "max_steps": 4, "eval_steps": 2, "save_steps": 4, "learning_rate": 0.002, "seed": 3, "push": {"name": "tiny-arith"},
        "evaluation": {"max_examples": 4, "max_new_tokens": 2, "max_general_ppl_ratio": None},
    }
    (tmp / "tiny-arith.yaml").write_text(yaml.safe_dump(config))
    train(load_config(tmp / "tiny-arith.yaml"), registry, progress=False)
    registry.set_alias("tiny-arith", "prod", 1)
    job_id = _a_job_through_the_queue(registry, tmp / "tiny-arith.yaml")
    tokens_file = tmp / "tokens.yaml"
    tokens = {name: create_token(name, roles, tokens_file) for name, roles in (
        ("reader", "read"), ("pusher", "push"), ("trainer", "train,read"), ("rival", "train,read"),
        ("releaser", "read,push"), ("client", "infer"), ("ops", "admin"))}
    options = ServerOptions(base=TINY_BASE, quant="none", port=0, http_port=0, auth_tokens=str(tokens_file))
    hooks = JobHooks(submit=submit, check_dataset=check_dataset, config_fields=form_fields, preview_dataset=preview_dataset,
                     plan=plan_submission, export_probes=held_out_probes)
    server, _, service = create_server(options, registry, job_hooks=hooks)
    yield {"url": f"http://127.0.0.1:{server.http_port}", "tokens": tokens, "tokens_file": tokens_file,
           "registry": registry, "job_id": job_id, "tmp": tmp}
    shutdown(server, service, 0)
    registry.close()


def _a_job_through_the_queue(registry: Registry, config: Path, result_version: str = "tiny-arith:1") -> str:
    """A job submitted and run to the end through the real queue, as a worker drives it (no training needed to show it):
    two logged steps, a checkpoint, then succeeded with `result_version` as its result."""
    from registry.jobs import SubmitRequest
    from trainer.jobs.submit import submit

    job = submit(registry, SubmitRequest(config_path=str(config)))
    cpu = {"device": "cpu", "device_name": "cpu", "memory_bytes": 64 << 30, "gpus": []}
    assert registry.jobs.claim("portal-worker", cpu).id == job.id
    registry.jobs.progress(job.id, 1, 2, {"loss": 2.5, "learning_rate": 0.002})
    registry.jobs.progress(job.id, 2, 2, {"loss": 1.75, "eval_loss": 1.9})
    registry.jobs.record_checkpoint(job.id, 2, "/gone/checkpoint-2", {"loss": 1.75})
    assert registry.jobs.finish(job.id, "portal-worker", "succeeded", result_version=result_version, device_seconds=7.0)
    return job.id


def sign_in(client: httpx.Client, token: str, next_page: str = "/ui/adapters") -> httpx.Response:
    form = client.get("/ui/sign-in")
    nonce = re.search(r'name="csrf" value="([^"]+)"', form.text).group(1)
    return client.post("/ui/sign-in", data={"token": token, "csrf": nonce, "next": next_page})


# --- sessions, over plain HTTP ------------------------------------------------------------------------------------


def test_a_page_without_a_session_sends_the_browser_to_sign_in_and_back(portal):
    with httpx.Client(base_url=portal["url"]) as client:
        reply = client.get("/ui/versions/tiny-arith:1")
        assert reply.status_code == 303 and reply.headers["location"] == "/ui/sign-in?next=/ui/versions/tiny-arith%3A1"
        signed_in = sign_in(client, portal["tokens"]["reader"], "/ui/versions/tiny-arith:1")
        assert signed_in.status_code == 303 and signed_in.headers["location"] == "/ui/versions/tiny-arith:1"
        cookie = signed_in.headers["set-cookie"]
        assert "loradock_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        assert portal["tokens"]["reader"] not in cookie  # the cookie names the token by its hash, never the token
        page = client.get("/ui/versions/tiny-arith:1")
        assert page.status_code == 200 and page.headers["x-content-type-options"] == "nosniff"
        policy = page.headers["content-security-policy"]  # the portal's own files only: no inline script, no CDN
        assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy


def test_the_adapters_page_filters_by_name_and_base(portal):
    with httpx.Client(base_url=portal["url"]) as client:
        sign_in(client, portal["tokens"]["reader"])
        assert "tiny-arith:1" in client.get("/ui/adapters", params={"base": TINY_BASE, "q": "arith"}).text
        assert "No adapter matches" in client.get("/ui/adapters", params={"base": "another-base"}).text
        assert "No adapter matches" in client.get("/ui/adapters", params={"q": "zzz"}).text


def test_a_wrong_token_a_forged_form_and_a_foreign_redirect_are_refused(portal):
    with httpx.Client(base_url=portal["url"]) as client:
        wrong = sign_in(client, "ldk_not-a-token")
        assert wrong.status_code == 401 and "error: that token is not one this server accepts" in wrong.text
        assert "loradock_session" not in wrong.headers.get("set-cookie", "")
    with httpx.Client(base_url=portal["url"]) as client:  # no sign-in form was opened: no matching nonce
        forged = client.post("/ui/sign-in", data={"token": portal["tokens"]["reader"], "csrf": "guess"})
        assert forged.status_code == 403 and "did not come from this portal" in forged.text
    with httpx.Client(base_url=portal["url"]) as client:
        away = sign_in(client, portal["tokens"]["reader"], "//evil.example/steal")
        assert away.headers["location"] == "/ui/adapters"


def test_signing_out_needs_the_session_s_csrf_token_and_a_removed_token_ends_its_session(portal, tmp_path):
    with httpx.Client(base_url=portal["url"]) as client:
        sign_in(client, portal["tokens"]["reader"])
        assert client.post("/ui/sign-out", data={"csrf": "forged"}).status_code == 403
        page = client.get("/ui/adapters")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        assert client.post("/ui/sign-out", data={"csrf": csrf}).status_code == 303
        assert client.get("/ui/adapters").status_code == 303
    with httpx.Client(base_url=portal["url"]) as client:
        sign_in(client, portal["tokens"]["reader"])
        assert client.get("/ui/adapters").status_code == 200
        saved = portal["tokens_file"].read_text()
        try:
            entries = yaml.safe_load(saved)
            entries["tokens"] = [t for t in entries["tokens"] if t["name"] != "reader"]
            portal["tokens_file"].write_text(yaml.safe_dump(entries))
            os.utime(portal["tokens_file"], (1, 1))  # a new stamp, whatever the clock's resolution
            assert client.get("/ui/adapters").status_code == 303  # the token is gone: so is its session
        finally:
            portal["tokens_file"].write_text(saved)


def test_a_token_without_read_sees_the_refusal_the_cli_would_print(portal):
    with httpx.Client(base_url=portal["url"]) as client:
        sign_in(client, portal["tokens"]["pusher"])
        page = client.get("/ui/adapters")
        assert page.status_code == 403
        assert "error: token 'pusher' has role(s) push; this page needs 'read'" in html.unescape(page.text)
        missing = client.get("/ui/versions/tiny-arith:99")
        assert missing.status_code == 403  # no read role: not even whether it exists


def test_an_unknown_version_is_the_cli_s_one_line_error(portal):
    with httpx.Client(base_url=portal["url"]) as client:
        sign_in(client, portal["tokens"]["reader"])
        page = client.get("/ui/versions/tiny-arith:99")
        with pytest.raises(NotFound) as refused:
            portal["registry"].resolve("tiny-arith:99")
        assert page.status_code == 404 and f"error: {refused.value}</p>" in html.unescape(page.text)


# --- in a real browser ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium through chromedriver (Debian's packages; `make test` installs them)."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("BROWSER TESTS SKIPPED: chromium and chromedriver are not installed "
                    "(apt-get install chromium chromium-driver; `make test` does it as root)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1280,800"):
        options.add_argument(flag)
    session = webdriver.Chrome(service=Service(driver), options=options)
    session.set_page_load_timeout(120)
    yield session
    session.quit()


def screenshot(browser, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(SCREENSHOTS / f"{name}.png"))


def navigate(browser, element) -> None:
    """Click `element` (a link or a form's button) and wait for the next page to replace this one (a backstop)."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    page = browser.find_element(By.TAG_NAME, "html")
    element.click()
    WebDriverWait(browser, 120).until(lambda _: page_left(page))


def page_left(page) -> bool:
    """True once `page` (the old <html>) is detached: staleness_of, plus the form chromedriver reports it in when the
    check lands mid-navigation ("Node with given id does not belong to the document"), which staleness_of raises."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException

    try:
        page.is_enabled()
        return False
    except StaleElementReferenceException:
        return True
    except WebDriverException as exc:
        if "does not belong to the document" in str(exc):
            return True
        raise


def labelled_fields_only(browser) -> None:
    """Every form field of the page has a label (accessibility basics), and the page a title and one h1."""
    from selenium.webdriver.common.by import By

    for field in browser.find_elements(By.CSS_SELECTOR, "input:not([type=hidden]), select, textarea"):
        assert browser.find_elements(By.CSS_SELECTOR, f"label[for='{field.get_attribute('id')}']"), field.get_attribute("name")
    assert browser.title.endswith("· loradock") and len(browser.find_elements(By.TAG_NAME, "h1")) == 1


def test_in_a_browser_sign_in_then_read_the_adapters_and_a_version_s_lineage(portal, browser):
    from selenium.webdriver.common.by import By

    browser.get(f"{portal['url']}/ui/adapters")
    assert browser.title == "Sign in · loradock"  # sent to sign in first
    labelled_fields_only(browser)
    screenshot(browser, "sign-in")
    browser.find_element(By.ID, "token").send_keys(portal["tokens"]["reader"])
    navigate(browser, browser.find_element(By.CSS_SELECTOR, "form.card button"))
    assert browser.title == "Adapters · loradock"
    labelled_fields_only(browser)
    rows = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "tbody tr")]
    assert len(rows) == 1 and rows[0].startswith(f"tiny-arith 1 tiny-arith:1 prod → 1 {TINY_BASE}")
    evaluation = portal["registry"].describe("tiny-arith:1")["evaluations"][-1]["metrics"]
    assert f"exact_match {evaluation['exact_match']:.3g}" in rows[0]  # the last evaluation's headline
    assert re.search(r"(not loaded|loaded|pinned), \d+ req/min", rows[0])  # the server's cache and traffic, beside the record
    screenshot(browser, "adapters")

    navigate(browser, browser.find_element(By.LINK_TEXT, "tiny-arith:1"))
    assert browser.title == "Version tiny-arith:1 · loradock"
    version = portal["registry"].resolve("tiny-arith:1")
    run = portal["registry"].run(version.run_id)
    text = browser.find_element(By.TAG_NAME, "main").text
    for needle in (version.manifest_digest, version.base_digest, run["config_hash"], run["datasets"][0]["sha256"],
                   *(f.sha256 for f in version.files)):
        assert needle in text, needle
    evaluation = browser.find_element(By.CSS_SELECTOR, "table.eval")
    assert "heldout/val" in evaluation.text and "loss" in evaluation.text
    lines = browser.find_elements(By.CSS_SELECTOR, "figure.chart polyline")
    assert {line.get_attribute("class") for line in lines} == {"train_loss", "val_loss"}
    screenshot(browser, "version")


def test_in_a_browser_the_jobs_queue_and_a_job_s_progress_events_and_result(portal, browser):
    from selenium.webdriver.common.by import By

    browser.get(f"{portal['url']}/ui/jobs")
    if browser.title == "Sign in · loradock":
        browser.find_element(By.ID, "token").send_keys(portal["tokens"]["reader"])
        navigate(browser, browser.find_element(By.CSS_SELECTOR, "form.card button"))
    assert browser.title == "Fine-tuning jobs · loradock"
    labelled_fields_only(browser)
    [row] = browser.find_elements(By.CSS_SELECTOR, "tbody tr")
    assert portal["job_id"] in row.text and "succeeded" in row.text and "2/2" in row.text and "tiny-arith:1" in row.text
    assert not browser.find_elements(By.CSS_SELECTOR, "meta[http-equiv=refresh]")  # nothing runs: no reloading
    screenshot(browser, "jobs")

    navigate(browser, browser.find_element(By.LINK_TEXT, portal["job_id"]))
    assert browser.title == f"Job {portal['job_id']} · loradock"
    text = browser.find_element(By.TAG_NAME, "main").text
    assert "step 2 of 2" in text and "stored in the registry" not in text and "removed" in text
    events = [r.text for r in browser.find_elements(By.CSS_SELECTOR, "table.events tbody tr")]
    assert len(events) == len(portal["registry"].jobs.events(portal["job_id"]))
    assert "succeeded: tiny-arith:1" in events[0]  # newest first
    assert {p.get_attribute("class") for p in browser.find_elements(By.CSS_SELECTOR, "figure.chart polyline")} == {
        "train_loss", "val_loss"}
    screenshot(browser, "job")
    navigate(browser, browser.find_element(By.LINK_TEXT, "tiny-arith:1"))
    assert browser.title == "Version tiny-arith:1 · loradock"


def _queued_job_of(registry: Registry, submitter: str) -> str:
    from registry.jobs import SubmitRequest
    from trainer.jobs.submit import submit

    config = next(Path(registry.home).parent.glob("tiny-arith.yaml"))
    return submit(registry, SubmitRequest(config_path=str(config), name="queued-one"), submitter).id


def test_job_buttons_follow_the_token_s_roles_and_ownership_and_forged_posts_get_403(portal):
    job_id = _queued_job_of(portal["registry"], "trainer")
    page_of = f"/ui/jobs/{job_id}"
    for who in ("reader", "rival"):  # no train role / not its job: no buttons, and posting anyway is refused
        with httpx.Client(base_url=portal["url"]) as client:
            sign_in(client, portal["tokens"][who])
            page = client.get(page_of)
            assert page.status_code == 200 and "Cancel job" not in page.text
            csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)  # its own session's (sign-out form)
            forged = client.post(f"{page_of}/cancel", data={"csrf": csrf})
            assert forged.status_code == 403, who
            expected = "this page needs 'train'" if who == "reader" else "was submitted by 'trainer', not 'rival'"
            assert expected in html.unescape(forged.text), who
    assert portal["registry"].jobs.get(job_id).state == "queued"
    with httpx.Client(base_url=portal["url"]) as client:
        sign_in(client, portal["tokens"]["trainer"])
        page = client.get(page_of)
        assert "Cancel job" in page.text
        assert client.post(f"{page_of}/cancel", data={"csrf": "not-this-session-s"}).status_code == 403
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        done = client.post(f"{page_of}/cancel", data={"csrf": csrf})
        assert done.status_code == 303 and portal["registry"].jobs.get(job_id).state == "cancelled"
        page = client.get(page_of)
        assert "Resume from its newest checkpoint" in page.text and "Cancel job" not in page.text
        assert client.post(f"{page_of}/resume", data={"csrf": csrf}).status_code == 303
        assert portal["registry"].jobs.get(job_id).state == "queued"
    entries = [(e["token"], e["action"], e["actor"]) for e in portal["registry"].audit_entries() if e["target"] == job_id]
    assert ("trainer", "job.cancel", "portal") in entries and ("trainer", "job.resume", "portal") in entries
    portal["registry"].jobs.cancel(job_id)  # leave the queue as the other tests expect it


def _csrf(page: httpx.Response) -> str:
    return re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)


def test_the_new_job_form_previews_the_upload_lists_every_bad_line_and_queues_a_checked_job(portal):
    from trainer.config import TrainConfig

    registry = portal["registry"]
    with httpx.Client(base_url=portal["url"]) as client:
        sign_in(client, portal["tokens"]["trainer"])
        csrf = _csrf(client.get("/ui/jobs/new"))
        before = (len(registry.jobs.list(limit=None)), len(registry.jobs.list_files()))
        lines = ARITH.read_text().splitlines()[:20]
        lines[6], lines[11] = '{"instruction": "no output"}', "not json"
        refused = client.post("/ui/jobs/upload", data={"csrf": csrf, "dataset_type": "alpaca"},
                              files={"dataset": ("mine.jsonl", "\n".join(lines).encode())})
        text = html.unescape(refused.text)
        assert refused.status_code == 400 and "2 bad line(s) in mine.jsonl" in text
        assert "mine.jsonl:7:" in text and "mine.jsonl:12:" in text  # every bad line, by the user's file name
        assert (len(registry.jobs.list(limit=None)), len(registry.jobs.list_files())) == before  # nothing stored

        data = "\n".join(ARITH.read_text().splitlines()[:40] + ARITH.read_text().splitlines()[:2]) + "\n"
        step2 = client.post("/ui/jobs/upload", data={"csrf": csrf, "dataset_type": "alpaca"},
                            files={"dataset": ("Support Data.jsonl", data.encode())})
        text = html.unescape(step2.text)
        assert step2.status_code == 200 and "Step 2 of 2" in text and "2 exact" in text and "42 (42 valid)" in text
        first = ARITH.read_text().splitlines()[0]
        import json

        assert json.loads(first)["output"] in text  # the first rows, as the trainer reads them
        assert 'value="support-data"' in step2.text  # a starting adapter name from the file's
        assert 'placeholder="16"' in step2.text and html.escape("LoRA rank.") in step2.text
        assert f"Default: {TrainConfig().learning_rate}" in step2.text
        file_id = re.search(r'name="file_id" value="([^"]+)"', step2.text).group(1)
        # `reg plan` for the form's settings, before anything is submitted: the tiny base is below the planner's range
        # (its one-line reason is shown); a 2.4M-parameter base (4 layers, hidden 256) is planned
        assert "123,200 parameters, outside the planner's range" in html.unescape(step2.text)
        if "wide-llama" not in [b.name for b in registry.list_bases()]:
            from tiny import build_tiny_llama

            registry.add_base(str(build_tiny_llama(portal["tmp"] / "wide-llama", seed=2, hidden=256, layers=4)), "wide-llama")
        planned = client.post("/ui/jobs/new", data={"csrf": csrf, "file_id": file_id, "base_model": "wide-llama",
                                                    "name": "from-form", "lora_r": "64", "sequence_len": "4096",
                                                    "adapter": "qlora", "action": "estimate"})
        estimate = html.unescape(planned.text)
        assert planned.status_code == 200 and "qlora (qlora), rank 64, sequence 4096 x batch 8" in estimate
        assert "GiB</strong> peak memory" in estimate and "Cheapest GPU types" in estimate
        assert len(registry.jobs.list(limit=None)) == before[0]  # an estimate queues nothing
        wrong = client.post("/ui/jobs/new", data={"csrf": csrf, "file_id": file_id, "base_model": TINY_BASE,
                                                  "name": "from-form", "lora_r": "many"})
        assert wrong.status_code == 400 and "lora_r" in wrong.text
        done = client.post("/ui/jobs/new", data={"csrf": csrf, "file_id": file_id, "base_model": TINY_BASE,
                                                 "name": "from-form", "dataset_type": "alpaca", "lora_r": "8",
                                                 "max_steps": "2"})
        assert done.status_code == 303 and done.headers["location"].startswith("/ui/jobs/ftjob-")
    job = registry.jobs.get(done.headers["location"].rsplit("/", 1)[-1])
    assert (job.state, job.adapter, job.submitter, job.source) == ("queued", "from-form", "trainer", "portal")
    assert job.config["lora_r"] == 8 and job.config["max_steps"] == 2 and job.datasets[0]["name"] == "Support Data.jsonl"
    registry.jobs.cancel(job.id)
    with httpx.Client(base_url=portal["url"]) as client:
        sign_in(client, portal["tokens"]["rival"])  # another trainer may not submit with this upload
        stolen = client.post("/ui/jobs/new", data={"csrf": _csrf(client.get("/ui/jobs/new")), "file_id": file_id,
                                                   "base_model": TINY_BASE, "name": "theirs"})
        assert stolen.status_code == 403 and "was uploaded by 'trainer'" in html.unescape(stolen.text)
    with httpx.Client(base_url=portal["url"]) as client:
        sign_in(client, portal["tokens"]["reader"])
        assert client.get("/ui/jobs/new").status_code == 403
        assert "New job" not in client.get("/ui/jobs").text


def test_in_a_browser_submit_a_job_with_a_dataset_and_watch_it_succeed(portal, browser, tmp_path):
    import subprocess
    import sys

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.delete_all_cookies()
    browser.get(f"{portal['url']}/ui/jobs/new")
    browser.find_element(By.ID, "token").send_keys(portal["tokens"]["trainer"])
    navigate(browser, browser.find_element(By.CSS_SELECTOR, "form.card button"))
    assert browser.title == "New fine-tuning job · loradock"
    labelled_fields_only(browser)
    dataset = tmp_path / "arith-40.jsonl"
    dataset.write_text("\n".join(ARITH.read_text().splitlines()[:40]) + "\n")
    browser.find_element(By.ID, "dataset").send_keys(str(dataset))
    Select(browser.find_element(By.ID, "dataset_type")).select_by_visible_text("alpaca")
    navigate(browser, browser.find_element(By.CSS_SELECTOR, "form.card button[type=submit]"))
    assert "Step 2 of 2" in browser.find_element(By.TAG_NAME, "main").text
    labelled_fields_only(browser)
    browser.find_element(By.ID, "name").clear()
    browser.find_element(By.ID, "name").send_keys("browser-job")
    for key, value in (("lora_r", "4"), ("max_steps", "2"), ("sequence_len", "48"), ("micro_batch_size", "4"),
                       ("val_set_size", "8")):
        browser.find_element(By.ID, key).send_keys(value)
    browser.execute_script("window.scrollTo(0, 0)")
    screenshot(browser, "job-new")
    navigate(browser, browser.find_element(By.CSS_SELECTOR, "form.card button[type=submit]"))
    assert browser.title.startswith("Job ftjob-")
    job_id = browser.title.split()[1]
    assert "queued" in browser.find_element(By.CSS_SELECTOR, ".lead").text
    browser.execute_script("window.beforeTheJobEnded = arguments[0]", job_id)  # gone if the page reloads
    log = tmp_path / "worker.log"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    worker = subprocess.Popen([str(Path(sys.executable).parent / "reg"), "worker", "--max-jobs", "1", "--lease-s", "3",
                               "--home", str(portal["registry"].home)], env=env, stdout=open(log, "ab"),
                              stderr=subprocess.STDOUT)
    try:
        assert worker.wait(600) == 0, log.read_text()[-3000:]  # a backstop, never a measure of speed
    finally:
        if worker.poll() is None:
            worker.kill()
    job = portal["registry"].jobs.get(job_id)
    assert job.state == "succeeded", job.error
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    # the page updates itself in place every 5 s while the job has not ended (120 s: a backstop); no reload
    WebDriverWait(browser, 120, ignored_exceptions=[NoSuchElementException, StaleElementReferenceException]).until(
        lambda b: "succeeded" in b.find_element(By.CSS_SELECTOR, ".lead").text)
    assert browser.execute_script("return window.beforeTheJobEnded") == job_id  # the same page: it was not reloaded
    assert int(browser.find_element(By.TAG_NAME, "body").get_attribute("data-live-refreshes")) >= 1
    navigate(browser, browser.find_element(By.LINK_TEXT, job.result_version))
    assert browser.title == f"Version {job.result_version} · loradock"
    assert job_id in browser.find_element(By.TAG_NAME, "main").text  # the version's lineage names the job


def test_a_rollout_from_the_version_page_its_report_and_a_promote(portal, browser, tmp_path):
    """90/10 from version 2's page, keyed requests over the HTTP API, the report counts them; then promote. A reader
    sees no forms and its forged POST gets 403; a change without a reason is refused and changes nothing."""
    import time

    from selenium.webdriver.common.by import By

    registry = portal["registry"]
    _, pulled = registry.pull("tiny-arith:1", tmp_path / "v1")
    second = registry.push(pulled, "tiny-arith", base=TINY_BASE, message="a second version", allow_duplicate=True)
    assert second.version.ref == "tiny-arith:2"
    with httpx.Client(base_url=portal["url"]) as client:
        sign_in(client, portal["tokens"]["reader"])
        page = client.get("/ui/rollouts/tiny-arith")
        assert page.status_code == 200 and "Set the split" not in page.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        forged = client.post("/ui/rollouts/tiny-arith", data={"csrf": csrf, "action": "clear", "reason": "x"})
        assert forged.status_code == 403 and "this page needs 'push'" in html.unescape(forged.text)
    with httpx.Client(base_url=portal["url"]) as client:
        sign_in(client, portal["tokens"]["releaser"])
        page = client.get("/ui/rollouts/tiny-arith?canary=2")
        assert 'value="1=90, 2=10"' in page.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        unexplained = client.post("/ui/rollouts/tiny-arith", data={"csrf": csrf, "action": "set", "arms": "1=90, 2=10"})
        assert unexplained.status_code == 400 and "reason: say why" in unexplained.text
        overweight = client.post("/ui/rollouts/tiny-arith", data={"csrf": csrf, "action": "set", "arms": "1=95, 2=10",
                                                                  "reason": "canary"})
        assert overweight.status_code == 400 and "100" in overweight.text
        assert registry.rollouts.show("tiny-arith")["history"] == []

    browser.delete_all_cookies()
    browser.get(f"{portal['url']}/ui/versions/tiny-arith:2")
    browser.find_element(By.ID, "token").send_keys(portal["tokens"]["releaser"])
    navigate(browser, browser.find_element(By.CSS_SELECTOR, "form.card button"))
    navigate(browser, browser.find_element(By.LINK_TEXT, "Roll out to 10 %"))
    assert browser.title == "Rollout of tiny-arith · loradock"
    labelled_fields_only(browser)
    navigate(browser, browser.find_element(By.LINK_TEXT, "Rollouts"))
    assert browser.title == "Rollouts · loradock" and "tiny-arith" in browser.find_element(By.TAG_NAME, "main").text
    labelled_fields_only(browser)
    screenshot(browser, "rollouts")
    browser.back()
    assert browser.find_element(By.ID, "arms").get_attribute("value") == "1=90, 2=10"
    browser.find_element(By.ID, "set-reason").send_keys("canary of version 2")
    navigate(browser, browser.find_element(By.XPATH, "//button[text()='Set the split']"))
    current = registry.rollouts.show("tiny-arith")["current"]
    assert [(a["version"], a["weight"]) for a in current["arms"]] == [(1, 90), (2, 10)] and current["sticky"]
    assert current["actor"] == "releaser" and current["reason"] == "canary of version 2"

    headers = {"Authorization": f"Bearer {portal['tokens']['client']}"}
    backstop, sent = time.monotonic() + 120, 0  # the server picks the split up, then records outcomes, each within a poll
    with httpx.Client(base_url=portal["url"], headers=headers, timeout=60) as api:
        while not sum(a["requests"] for a in registry.rollouts.report("tiny-arith")["arms"]) >= 10:
            assert time.monotonic() < backstop, "the report never counted the requests"
            for _ in range(5):
                reply = api.post("/v1/completions", json={"model": "tiny-arith", "prompt": "1+1=", "max_tokens": 2},
                                 headers={"x-routing-key": f"user-{sent}"})
                assert reply.status_code == 200, reply.text
                sent += 1
            time.sleep(0.2)
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.support.ui import WebDriverWait

    def counted(b) -> int:  # the report's requests column, as the page shows it now
        return sum(int(cell.text) for cell in b.find_elements(By.CSS_SELECTOR, "#rollout-live table:first-of-type tbody td:nth-child(4)"))

    browser.execute_script("window.beforeTheRequests = 1")
    # the report updates in place every 5 s while a rollout is in force (120 s: a backstop)
    WebDriverWait(browser, 120, ignored_exceptions=[StaleElementReferenceException]).until(lambda b: counted(b) >= 10)
    assert browser.execute_script("return window.beforeTheRequests") == 1  # no reload
    charts = [t.get_attribute("textContent") for t in browser.find_elements(By.CSS_SELECTOR, "#rollout-live figure.chart svg title")]
    assert any(c.startswith("Requests per interval, by arm: arm A (version 1)") for c in charts), charts
    screenshot(browser, "rollout")

    from selenium.webdriver.support.ui import Select

    Select(browser.find_element(By.ID, "version")).select_by_value("2")
    browser.find_element(By.ID, "promote-reason").send_keys("canary looked fine")
    navigate(browser, browser.find_element(By.XPATH, "//button[text()='Promote']"))
    current = registry.rollouts.show("tiny-arith")["current"]
    assert [(a["version"], a["weight"]) for a in current["arms"]] == [(2, 100)] and current["action"] == "promote"
    history = [row.text for row in browser.find_elements(By.XPATH, "//h2[text()='History']/following-sibling::table//tbody/tr")]
    assert history[0].startswith("2 promote") and "releaser" in history[0] and "canary looked fine" in history[0]


def test_the_server_page_shows_its_stats_and_only_an_admin_loads_pins_and_unloads(portal, browser):
    from selenium.webdriver.common.by import By

    with httpx.Client(base_url=portal["url"]) as client:
        sign_in(client, portal["tokens"]["client"])
        page = client.get("/ui/server")
        assert page.status_code == 200 and "Adapter cache" in page.text and "Manage" not in page.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        forged = client.post("/ui/server/adapters", data={"csrf": csrf, "ref": "tiny-arith:1", "action": "load"})
        assert forged.status_code == 403 and "this page needs 'admin'" in html.unescape(forged.text)
    with httpx.Client(base_url=portal["url"]) as client:
        sign_in(client, portal["tokens"]["reader"])
        assert client.get("/ui/server").status_code == 403  # ServerStats needs `infer`, as over gRPC

    browser.delete_all_cookies()
    browser.get(f"{portal['url']}/ui/server")
    browser.find_element(By.ID, "token").send_keys(portal["tokens"]["ops"])
    navigate(browser, browser.find_element(By.CSS_SELECTOR, "form.card button"))
    assert browser.title == "Server · loradock"

    def state_of(ref: str) -> str:
        row = browser.find_element(By.XPATH, f"//h2[text()='Adapters']/following-sibling::table//tr[td[1][text()='{ref}']]")
        return row.find_elements(By.TAG_NAME, "td")[1].text

    ref = next(r.text.split()[0] for r in browser.find_elements(
        By.XPATH, "//h2[text()='Adapters']/following-sibling::table//tbody/tr"))  # the newest servable version
    for action, state in (("pin", "pinned"), ("unload", "not loaded"), ("load", "loaded")):
        row = browser.find_element(By.XPATH, f"//h2[text()='Adapters']/following-sibling::table//tr[td[1][text()='{ref}']]")
        navigate(browser, row.find_element(By.XPATH, f".//button[@value='{action}']"))
        assert state_of(ref) == state, action
    screenshot(browser, "server")


def _start_portal(*args: str, env: dict | None = None):
    """`reg [ARGS] portal --port 0 ...` in its own process; (process, base URL) once its log line names the port."""
    import subprocess
    import sys
    import time

    command = [str(Path(sys.executable).parent / "reg"), *args]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, **(env or {})})
    backstop = time.monotonic() + 120
    for line in proc.stderr:
        found = re.search(r"portal on (http://[0-9.]+:[0-9]+)/ui", line)
        if found:
            return proc, found.group(1)
        assert time.monotonic() < backstop and proc.poll() is None, line
    raise AssertionError(f"reg portal exited ({proc.wait()}) without naming its port")


def test_reg_portal_serves_a_local_or_a_remote_registry_without_a_model(portal, tmp_path):
    from server.app import create_registry_server

    tokens = portal["tokens_file"]
    proc, url = _start_portal("portal", "--port", "0", "--home", str(portal["registry"].home), "--auth-tokens", str(tokens))
    try:
        with httpx.Client(base_url=url) as client:
            assert client.get("/").headers["location"] == "/ui/adapters"
            sign_in(client, portal["tokens"]["reader"])
            page = client.get("/ui/adapters")
            assert page.status_code == 200 and "tiny-arith" in page.text and "Server</a>" not in page.text
            assert client.get("/ui/server").status_code == 404  # no model here: no server page
    finally:
        proc.terminate()
        assert proc.wait(60) == 0
    served, port, _ = create_registry_server(ServerOptions(port=0, auth_tokens=str(tokens)), portal["registry"].home)
    try:
        proc, url = _start_portal("--registry", f"grpc://127.0.0.1:{port}", "portal", "--port", "0", "--home",
                                  str(tmp_path / "cache"), "--auth-tokens", str(tokens),
                                  env={"LORADOCK_TOKEN": portal["tokens"]["ops"]})
        try:
            with httpx.Client(base_url=url) as client:
                sign_in(client, portal["tokens"]["reader"])
                version = client.get("/ui/versions/tiny-arith:1")
                assert version.status_code == 200
                assert portal["registry"].resolve("tiny-arith:1").manifest_digest in version.text  # read over gRPC
                jobs_page = client.get("/ui/jobs")
                assert jobs_page.status_code == 200 and portal["job_id"] in jobs_page.text
        finally:
            proc.terminate()
            assert proc.wait(60) == 0
    finally:
        served.stop(0)


def test_a_version_page_points_an_alias_and_diffs_with_another_version(portal, tmp_path):
    registry = portal["registry"]
    if registry.count_versions("tiny-arith") < 2:
        _, pulled = registry.pull("tiny-arith:1", tmp_path / "v1")
        registry.push(pulled, "tiny-arith", base=TINY_BASE, message="a second version", allow_duplicate=True)
    with httpx.Client(base_url=portal["url"]) as client:
        sign_in(client, portal["tokens"]["reader"])
        page = client.get("/ui/versions/tiny-arith:2")
        assert 'name="alias"' not in page.text
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        assert client.post("/ui/versions/tiny-arith:2/alias", data={"csrf": csrf, "alias": "staging"}).status_code == 403
        diff = client.get("/ui/diff", params={"a": "tiny-arith:1", "b": "tiny-arith:2"})
        assert diff.status_code == 200 and "the two versions are identical" in diff.text
        assert client.get("/ui/diff", params={"a": "tiny-arith:1", "b": "nope:1"}).status_code == 404
    with httpx.Client(base_url=portal["url"]) as client:
        sign_in(client, portal["tokens"]["releaser"])
        page = client.get("/ui/versions/tiny-arith:2")
        csrf = re.search(r'name="csrf" value="([^"]+)"', page.text).group(1)
        bad = client.post("/ui/versions/tiny-arith:2/alias", data={"csrf": csrf, "alias": "Not An Alias"})
        assert bad.status_code == 400 and "invalid alias" in html.unescape(bad.text)
        done = client.post("/ui/versions/tiny-arith:2/alias", data={"csrf": csrf, "alias": "staging"})
        assert done.status_code == 303 and registry.aliases("tiny-arith")["staging"] == 2
        history = client.get("/ui/versions/tiny-arith:2").text
        assert re.search(r"<td>staging</td>\s*<td>set: - → 2</td><td>releaser</td>", history)


def test_with_auth_off_on_localhost_forms_still_need_the_page_s_csrf_token(portal):
    """No tokens: everyone on this machine is the local admin, but another site's page cannot post the forms."""
    proc, url = _start_portal("portal", "--port", "0", "--home", str(portal["registry"].home))
    try:
        with httpx.Client(base_url=url) as client:
            page = client.get("/ui/rollouts/tiny-arith")
            assert page.status_code == 200 and "auth off (localhost)" in page.text and "Set the split" in page.text
            for guess in ("auth-off", "", "x"):
                forged = client.post("/ui/rollouts/tiny-arith", data={"csrf": guess, "action": "clear", "reason": "x"})
                assert forged.status_code == 403, guess
            assert client.post("/ui/rollouts/tiny-arith", data={"csrf": _csrf(page), "action": "bogus",
                                                                "reason": "x"}).status_code == 400
    finally:
        proc.terminate()
        assert proc.wait(60) == 0


# --- the playground, exports, and the pages not shot above -------------------------------------------------------


def test_the_playground_answers_each_column_without_javascript_and_streams_one_column(portal):
    with httpx.Client(base_url=portal["url"], timeout=120) as client:
        sign_in(client, portal["tokens"]["reader"])
        assert client.get("/ui/playground").status_code == 403  # answering needs `infer`, as Generate does
    with httpx.Client(base_url=portal["url"], timeout=120) as client:
        sign_in(client, portal["tokens"]["client"])
        csrf = _csrf(client.get("/ui/playground"))
        form = {"csrf": csrf, "prompt": "1+1=", "format": "raw", "max_tokens": "4", "target_0": "base",
                "target_1": "tiny-arith:1", "target_2": "tiny-arith:1=0.5", "target_3": "nope:1"}
        page = html.unescape(client.post("/ui/playground", data=form).text)
        served = dict(re.findall(r'id="served_(\d)"[^>]*>([^<]*)</p>', page))
        assert served["0"] == "served by the base" and served["1"] == "served by tiny-arith:1"
        assert served["2"].startswith("served by merge"), served  # a merge answers under its merge key
        assert served["3"].startswith("error: ") and "nope" in served["3"]  # an unknown adapter's one line, in its column
        import json

        for target, served in (("tiny-arith:1", "served by tiny-arith:1"), ("base", "served by the base")):
            with client.stream("POST", "/ui/playground/stream", data={**form, "target": target}) as stream:
                assert stream.status_code == 200 and stream.headers["content-type"].startswith("text/event-stream")
                events = [json.loads(line.removeprefix("data: ")) for line in stream.iter_lines() if line]
            assert events[-1]["done"] and events[-1]["served"] == served
            assert all("delta" in e for e in events[:-1])
        assert "".join(e["delta"] for e in events[:-1])  # the base's random weights say something: it came as deltas
        refused = client.post("/ui/playground/stream", data={**form, "target": "nope:1"})
        assert refused.status_code == 404 and "nope" in refused.text and "<" not in refused.text  # one line, no page
        assert client.post("/ui/playground/stream", data={**form, "csrf": "forged"}).status_code == 403


def test_in_a_browser_the_playground_streams_answers_side_by_side(portal, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.delete_all_cookies()
    browser.get(f"{portal['url']}/ui/playground")
    browser.find_element(By.ID, "token").send_keys(portal["tokens"]["client"])
    navigate(browser, browser.find_element(By.CSS_SELECTOR, "form.card button"))
    assert browser.title == "Playground · loradock"
    labelled_fields_only(browser)
    browser.find_element(By.ID, "prompt").send_keys("What is 2+3?")
    browser.find_element(By.ID, "max_tokens").clear()
    browser.find_element(By.ID, "max_tokens").send_keys("8")
    browser.find_element(By.ID, "target_1").send_keys("tiny-arith@prod")
    browser.find_element(By.ID, "target_2").send_keys("tiny-arith:1")
    browser.execute_script("window.beforeTheAnswers = 1")
    browser.find_element(By.CSS_SELECTOR, "#playground button[type=submit]").click()
    served = lambda b: [b.find_element(By.ID, f"served_{i}").text for i in range(3)]  # noqa: E731
    WebDriverWait(browser, 120).until(lambda b: all(text.startswith("served by") for text in served(b)))  # a backstop
    assert browser.execute_script("return window.beforeTheAnswers") == 1  # streamed into this page, not a new one
    first, second, third = served(browser)
    assert first == "served by the base" and re.fullmatch(r"served by tiny-arith:\d+", second)
    assert third == "served by tiny-arith:1"
    assert all(browser.find_element(By.ID, f"answer_{i}").text for i in range(3))
    assert browser.find_element(By.ID, "served_3").text == ""  # an empty column asks nothing
    screenshot(browser, "playground")


def test_an_export_from_the_version_page_is_checked_recorded_and_downloadable(portal, tmp_path):
    import tarfile
    import time

    registry = portal["registry"]
    with httpx.Client(base_url=portal["url"], timeout=120) as client:
        sign_in(client, portal["tokens"]["reader"])
        page = client.get("/ui/versions/tiny-arith:1")
        assert "Export</button>" not in page.text
        assert client.post("/ui/versions/tiny-arith:1/export", data={"csrf": _csrf(page), "format": "peft"}).status_code == 403
    with httpx.Client(base_url=portal["url"], timeout=120) as client:
        sign_in(client, portal["tokens"]["releaser"])
        csrf = _csrf(client.get("/ui/versions/tiny-arith:1"))
        bad = client.post("/ui/versions/tiny-arith:1/export", data={"csrf": csrf, "format": "gguf"})
        assert bad.status_code == 400 and "format 'gguf': expected merged or peft" in html.unescape(bad.text)
        before = len(registry.describe("tiny-arith:1")["exports"])
        started = client.post("/ui/versions/tiny-arith:1/export", data={"csrf": csrf, "format": "merged", "dtype": "fp32"})
        assert started.status_code == 303 and started.headers["location"] == "/ui/versions/tiny-arith%3A1#exports"
        backstop = time.monotonic() + 300
        while len(registry.describe("tiny-arith:1")["exports"]) == before:
            assert time.monotonic() < backstop, client.get("/ui/versions/tiny-arith:1").text[-3000:]
            time.sleep(0.5)
        record = registry.describe("tiny-arith:1")["exports"][-1]
        assert record["status"] == "passed" and record["actor"] == "releaser", record
        page = client.get("/ui/versions/tiny-arith:1").text
        link = f"/ui/versions/tiny-arith:1/exports/{record['id']}.tar"
        assert link in page and "passed" in page
        archive = tmp_path / "export.tar"
        with client.stream("GET", link) as download:
            assert download.status_code == 200
            with archive.open("wb") as f:
                for chunk in download.iter_bytes():
                    f.write(chunk)
        with tarfile.open(archive) as tar:
            names = {m.name.split("/", 1)[1]: m for m in tar.getmembers()}
            assert set(names) == {f["path"] for f in record["files"]}
            import hashlib

            for f in record["files"]:
                assert hashlib.sha256(tar.extractfile(names[f["path"]]).read()).hexdigest() == f["sha256"].removeprefix("sha256:")
        assert client.get(f"/ui/versions/tiny-arith:1/exports/{record['id'] + 99}.tar").status_code == 404


def test_in_a_browser_an_adapter_s_versions_and_a_diff(portal, browser, tmp_path):
    from selenium.webdriver.common.by import By

    registry = portal["registry"]
    if registry.count_versions("tiny-arith") < 2:
        _, pulled = registry.pull("tiny-arith:1", tmp_path / "v1")
        registry.push(pulled, "tiny-arith", base=TINY_BASE, message="a second version", allow_duplicate=True)
    browser.delete_all_cookies()
    browser.get(f"{portal['url']}/ui/adapters/tiny-arith")
    browser.find_element(By.ID, "token").send_keys(portal["tokens"]["reader"])
    navigate(browser, browser.find_element(By.CSS_SELECTOR, "form.card button"))
    assert browser.title == "Adapter tiny-arith · loradock"
    labelled_fields_only(browser)
    assert "tiny-arith:2" in browser.find_element(By.TAG_NAME, "main").text
    screenshot(browser, "adapter")
    browser.get(f"{portal['url']}/ui/versions/tiny-arith:2")
    navigate(browser, browser.find_element(By.XPATH, "//button[text()='Diff']"))
    assert browser.title.endswith("· loradock") and "tiny-arith:2" in browser.title
    labelled_fields_only(browser)
    screenshot(browser, "diff")


# --- capture and the continuous fine-tuning loop, on the adapter's page -----------------------------------------


def test_an_adapter_without_capture_or_a_loop_says_how_to_set_them_and_a_remote_portal_where_they_are_read(portal):
    registry = portal["registry"]
    assert registry.captures.get("tiny-arith") is None  # the loop test below turns it on
    with httpx.Client(base_url=portal["url"]) as client:
        sign_in(client, portal["tokens"]["reader"])
        page = html.unescape(client.get("/ui/adapters/tiny-arith").text)
    assert "Capture is off for tiny-arith" in page and "<code>reg capture set tiny-arith</code>" in page
    assert "No loop for tiny-arith: <code>reg loop set tiny-arith --schedule daily" in page
    assert "data-live" not in page and 'id="turns"' not in page

    from server.app import create_registry_server

    tokens = portal["tokens_file"]
    served, port, _ = create_registry_server(ServerOptions(port=0, auth_tokens=str(tokens)), registry.home)
    try:
        proc, url = _start_portal("--registry", f"grpc://127.0.0.1:{port}", "portal", "--port", "0", "--home",
                                  str(portal["tmp"] / "remote-cache"), "--auth-tokens", str(tokens),
                                  env={"LORADOCK_TOKEN": portal["tokens"]["ops"]})
        try:
            with httpx.Client(base_url=url) as client:
                sign_in(client, portal["tokens"]["reader"])
                remote = client.get("/ui/adapters/tiny-arith")
            assert remote.status_code == 200 and "tiny-arith:1" in remote.text  # the versions, read over gRPC
            assert "capture and loops are read on the registry's host" in " ".join(html.unescape(remote.text).split())
        finally:
            proc.terminate()
            assert proc.wait(60) == 0
    finally:
        served.stop(0)


def test_a_turn_s_canary_and_decision_read_as_words():
    from server.portal.app import step_view

    canary = step_view({"step": "canary", "at": "2026-01-05T10:00:00.000+00:00", "revision": 7, "percent": 10,
                        "promote_after": 2000})
    assert canary["words"] == "rollout revision 7, 10 % of routing keys, decides after 2,000 requests"
    decide = step_view({"step": "decide", "at": "2026-01-06T09:30:00.000+00:00", "decision": "rolled_back",
                        "requests": 2034, "errors": 61, "success_rate": 0.9701,
                        "comparisons": [{"metric": "feedback success rate", "rate": 0.62, "against_rate": 0.71,
                                         "p_value": 0.012, "verdict": "B worse"},
                                        {"metric": "request success rate", "rate": 0.97, "against_rate": 0.98,
                                         "p_value": 0.21, "verdict": "no detectable difference"}]})
    assert decide["words"] == "rolled_back, 2,034 requests, 61 errors, success rate 97.0%"
    assert decide["lines"] == [
        ("feedback success rate: candidate 62.0% against champion 71.0%, p=0.012: B worse", "bad"),
        ("request success rate: candidate 97.0% against champion 98.0%, p=0.21: no detectable difference", "")]


def _captured_traffic(registry: Registry, adapter: str, version: int) -> None:
    """Forty served requests as a server's capture keeps them, and feedback on some: good, bad, and corrected."""
    from registry.capture import CapturedRequest
    from registry.db import utcnow
    from registry.rollout_records import FeedbackRecord

    requests, feedback = [], []
    for i in range(40):
        a, b = 7 * i + 3, 11 * i + 5
        request_id = f"req-loop-{i}"
        requests.append(CapturedRequest(adapter, version, None, "", request_id, f"key-{i % 9}", "",
                                        [{"role": "user", "content": f"What is {a} plus {b}? Write only the sum."}],
                                        str(a + b if i % 5 else a + b + 1), latency_ms=40.0 + i))
        if i % 3 == 0:  # every third was rated; every fifth of those a wrong sum, corrected by a person
            wrong = i % 5 == 0
            feedback.append(FeedbackRecord(request_id, adapter, version, None, "", 0.0 if wrong else 1.0, "", utcnow(),
                                           str(a + b) if wrong and i % 2 == 0 else ""))
        elif i % 7 == 0:
            feedback.append(FeedbackRecord(request_id, adapter, version, None, "", None, "good", utcnow()))
    assert registry.captures.record(requests) == len(requests)
    registry.rollouts.record([], feedback)


def test_in_a_browser_an_adapter_s_capture_its_loop_and_a_turn_stopped_at_the_gate(portal, browser, tmp_path):
    """Capture and a loop set on tiny-arith, a turn recorded step by step as the loop runner records it (no training:
    real curation of real captured rows, a job run through the queue, the gate's real rules on set numbers); the
    page is live while the turn is in flight, then shows the turn, its reason and every gate line."""
    import hashlib

    from selenium.webdriver.common.by import By

    from registry.capture import DEFAULT_REDACTIONS, CaptureConfig
    from registry.loops import LoopConfig, check_gate, parse_gate
    from trainer.curate import curate, write
    from trainer.heldout import held_out_examples, trained_examples

    registry = portal["registry"]
    if registry.count_versions("tiny-arith") < 2:
        _, pulled = registry.pull("tiny-arith:1", tmp_path / "v1")
        registry.push(pulled, "tiny-arith", base=TINY_BASE, message="a second version", allow_duplicate=True)
    champion, candidate = registry.resolve("tiny-arith:1"), registry.resolve("tiny-arith:2")
    registry.captures.set("tiny-arith", CaptureConfig(0.25, 10 * 86400, 64 * 2**20, (*DEFAULT_REDACTIONS, r"ldk_\w+")))
    config = registry.loops.set("tiny-arith", LoopConfig(
        schedule="daily", min_new_examples=10, gate=parse_gate("task_score>champion, exact_match>=champion+0.01")))
    _captured_traffic(registry, "tiny-arith", champion.number)

    captured = registry.captures.summary("tiny-arith")
    run_id = registry.loops.start_run("tiny-arith", "new_examples", champion.number)
    registry.loops.add_step(run_id, "capture", requests=captured["requests"], with_feedback=captured["with_feedback"],
                            since=champion.created_at)
    excluded, described = trained_examples(registry, champion)
    curated = curate(registry.captures.rows("tiny-arith", since=champion.created_at), min_score=config.min_score,
                     exclude=excluded, holdout=config.holdout)
    write(curated.train, curated.format, tmp_path / "curated.jsonl")
    sha = hashlib.sha256((tmp_path / "curated.jsonl").read_bytes()).hexdigest()
    registry.loops.add_step(run_id, "curate", **curated.counts, format=curated.format, dataset_sha256=sha,
                            excluded=described)
    assert curated.counts["kept"] >= config.min_new_examples and curated.counts["corrected"] >= 1, curated.counts
    with httpx.Client(base_url=portal["url"]) as client:  # in flight: the loop's parts refresh themselves
        sign_in(client, portal["tokens"]["reader"])
        page = client.get("/ui/adapters/tiny-arith").text
    assert 'id="loop-turns" data-live="5"' in page and 'a turn is at <span class="state running">curate</span>' in page

    job_id = _a_job_through_the_queue(registry, portal["tmp"] / "tiny-arith.yaml", result_version=candidate.ref)
    registry.loops.add_step(run_id, "train", job_id=job_id, mode=config.mode)
    champion_metrics = {"exact_match": 0.25, "rouge_l": 0.412, "bleu": 0.118, "task_score": 0.25, "loss": 1.917,
                        "perplexity": 6.80, "general_perplexity": 118.4}
    candidate_metrics = {"exact_match": 0.3125, "rouge_l": 0.468, "bleu": 0.151, "task_score": 0.3125, "loss": 1.706,
                         "perplexity": 5.51, "general_perplexity": 131.9}  # better on the task, forgot general text
    fixed_champion = {**champion_metrics, "task_score": 0.25, "exact_match": 0.25}
    fixed_candidate = {**candidate_metrics, "task_score": 0.375, "exact_match": 0.375}
    lines, passed = [], True
    for label, mine, theirs in (("gate set", candidate_metrics, champion_metrics),
                                ("fixed held-out set", fixed_candidate, fixed_champion)):
        ok, checked = check_gate(config.gate, mine, theirs)
        passed &= ok
        lines += [f"{label}: {line}" for line in checked]
    fixed = len(held_out_examples(registry, champion)[0])  # the champion's held-out split, which the gate set holds
    registry.loops.add_step(run_id, "gate", candidate=candidate.number, passed=passed, rules=lines,
                            gate_examples=fixed + curated.counts["heldout"], fixed=fixed, fresh=curated.counts["heldout"],
                            champion_metrics=champion_metrics, candidate_metrics=candidate_metrics,
                            fixed_champion_metrics=fixed_champion, fixed_candidate_metrics=fixed_candidate)
    reason = "; ".join(line for line in lines if line.endswith(": failed"))
    registry.loops.end_run(run_id, "stopped_at_gate", reason)
    assert not passed and "general_perplexity" in reason

    browser.delete_all_cookies()
    browser.get(f"{portal['url']}/ui/adapters/tiny-arith")
    browser.find_element(By.ID, "token").send_keys(portal["tokens"]["reader"])
    navigate(browser, browser.find_element(By.CSS_SELECTOR, "form.card button"))
    assert browser.title == "Adapter tiny-arith · loradock"
    labelled_fields_only(browser)
    assert not browser.find_elements(By.CSS_SELECTOR, "[data-live]")  # the turn ended: nothing refreshes
    facts = " ".join(browser.find_element(By.XPATH, "//section[@aria-labelledby='capture']").text.split())
    for needle in ("Status on", "Sample 25 % of requests", "Retention 10d", "Size bound 67,108,864 bytes", r"ldk_\w+",
                   f"Requests captured {captured['requests']}", f"With feedback {captured['with_feedback']}"):
        assert needle in facts, needle
    settings = browser.find_element(By.CSS_SELECTOR, "table.settings").text
    assert "gate task_score>champion, exact_match>=champion+0.01, general_perplexity<=champion*1.05" in settings
    assert "min_new_examples 10" in settings and "schedule daily" in settings
    turn = browser.find_element(By.ID, f"turn-{run_id}").find_element(By.XPATH, "..")
    assert turn.find_element(By.CSS_SELECTOR, "h3 .state").text == "stopped at gate"
    assert turn.find_element(By.CSS_SELECTOR, ".reason").text == reason
    judged = turn.find_elements(By.CSS_SELECTOR, "ul.judged li")
    assert [(li.text, li.get_attribute("class")) for li in judged] == [
        (line, "ok" if line.endswith(": passed") else "bad") for line in lines]
    steps = [row.text for row in turn.find_elements(By.CSS_SELECTOR, "table.steps > tbody > tr")]
    assert [s.split()[0] for s in steps] == ["capture", "curate", "train", "gate"]
    assert f"{curated.counts['kept']} kept to train on" in steps[1] and f"dataset sha256 {sha[:12]}" in steps[1]
    assert steps[3].startswith(f"gate {registry.loops.runs('tiny-arith', 1)[0]['steps'][3]['at'][:19].replace('T', ' ')} "
                               f"failed, candidate version 2, {fixed + curated.counts['heldout']} gate examples")
    browser.execute_script("arguments[0].scrollIntoView({block: 'end'})", turn)  # the turn whole, the settings above
    screenshot(browser, "adapter-loop")
    navigate(browser, turn.find_element(By.LINK_TEXT, job_id))
    assert browser.title == f"Job {job_id} · loradock"
