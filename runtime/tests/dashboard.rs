//! The dashboard at `GET /`, seen as a person sees it: Debian's Chromium, headless, driven over
//! WebDriver (chromedriver) against a real Prism running the three examples.
//!
//! Chromium and chromedriver come from Debian's `chromium` and `chromium-driver` packages. When
//! they are missing, this test installs them with apt-get (as root); when it cannot, it fails
//! and says what to install. It never skips.
//!
//! It saves screenshots to `target/test-artifacts/` (under `CARGO_TARGET_DIR` when that is
//! set): `dashboard.png`, `dashboard-token.png` (asking for a token), and
//! `dashboard-failure.png` when a check fails.

mod common;

use anyhow::{Context, Result, bail};
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use serde_json::{Value, json};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const PACKAGES: [&str; 2] = ["chromium", "chromium-driver"];
const EXAMPLES: [&str; 3] = ["event-counter", "order-totals", "account-balances"];

/// How long the page may take to show something the API already has.
const PATIENCE: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread")]
async fn the_dashboard_shows_projectors_views_and_streams_live() {
    ensure_chromium();
    let dir = tempfile::tempdir().unwrap();
    let (server, client) = common::start(dir.path()).await;
    for (name, wasm) in common::examples() {
        client.deploy(name, wasm).await;
    }
    // And the poison fixture twice: one faults on a poisoned event, one dead-letters it.
    client.deploy("poison", common::artifacts::POISON).await;
    client
        .deploy_with("poison-skip", common::artifacts::POISON, "on_error=skip")
        .await;
    common::append_history(&client).await;
    for name in EXAMPLES.into_iter().chain(["poison", "poison-skip"]) {
        client.wait_caught_up(name).await;
    }
    let poisoned = json!([
        {"type": "N", "data": {"n": 1}},
        {"type": "N", "data": {"n": 2, "poison": true}},
        {"type": "N", "data": {"n": 3}},
    ]);
    let head = client.append("p-1", poisoned).await["last_position"]
        .as_u64()
        .unwrap();
    let poison_position = head - 1;
    for name in EXAMPLES.into_iter().chain(["poison-skip"]) {
        client.wait_caught_up(name).await;
    }
    client
        .wait_until("poison", "its fault", |s| s["state"] == "faulted")
        .await;

    // GET /streams, which the stream browser lists: names in order with versions, paged.
    let page = client.get("/streams?limit=3").await;
    assert_eq!(page.status, 200, "{}", page.body);
    assert_eq!(
        page.body,
        json!({"streams": [
            {"stream": "account-a1", "version": 5},
            {"stream": "account-a2", "version": 2},
            {"stream": "account-a3", "version": 1},
        ], "next": "account-a3"})
    );
    let rest = client.get("/streams?after=account-a3&limit=100").await.body;
    let names: Vec<&str> = rest["streams"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stream"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["order-o1", "order-o2", "order-o3", "order-o9", "p-1"]
    );
    assert_eq!(rest["next"], Value::Null);
    assert_eq!(client.get("/streams?limit=0").await.status, 400);

    // A second Prism whose reads need a token: the page itself loads, then asks for one.
    let guarded_dir = tempfile::tempdir().unwrap();
    let (guarded, guarded_client) = common::start_with(guarded_dir.path(), |config| {
        config.tokens.read = Some("let-me-read".into());
    })
    .await;
    let refused = guarded_client.get("/projectors").await;
    assert_eq!(
        refused.status, 401,
        "the guarded Prism refuses reads without a token"
    );
    for open in ["/", "/dashboard/app.js", "/dashboard/style.css"] {
        let reply = guarded_client.request("GET", open).send().await.unwrap();
        assert_eq!(reply.status(), 200, "GET {open} needs no token");
    }
    assert_eq!(guarded_client.get("/dashboard/nope.js").await.status, 404);

    let started = Instant::now();
    let driver = Chromedriver::start();
    let browser = driver.connect().await;
    let outcome = async {
        check_dashboard(&browser, &client, head, poison_position).await?;
        // The screenshot shows the first Prism; then the token flow on the second.
        browser.execute("window.scrollTo(0, 0)", vec![]).await?;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let png = browser.screenshot().await?;
        let path = artifact("dashboard.png");
        std::fs::write(&path, png).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("dashboard screenshot: {}", path.display());
        check_token_flow(&browser, &guarded_client).await
    }
    .await;
    if let Err(e) = &outcome {
        if let Ok(png) = browser.screenshot().await {
            let path = artifact("dashboard-failure.png");
            let _ = std::fs::write(&path, png);
            eprintln!("screenshot of the failure: {}", path.display());
        }
        if let Ok(Value::String(text)) = browser
            .execute("return document.body.innerText", vec![])
            .await
        {
            eprintln!("the page's text when it failed:\n{text}");
        }
        let _ = browser.clone().close().await;
        panic!("dashboard check failed: {e:#}");
    }
    browser.close().await.expect("closing the browser session");
    eprintln!(
        "browser checks took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    drop(driver);
    guarded.stop().await;
    server.stop().await;
}

/// What a person checks on the page of a Prism that has applied the history up to `head`.
async fn check_dashboard(
    browser: &Browser,
    client: &common::Client,
    head: u64,
    poison_position: u64,
) -> Result<()> {
    browser.goto(&client.url("/")).await?;
    let title = browser.title().await?;
    if title != "Prism dashboard" {
        bail!("the page's title is {title:?}");
    }

    // Every projector: its name, "live", and a checkpoint at the log's head.
    for name in EXAMPLES {
        let card = format!("article[data-projector='{name}']");
        wait_text(browser, &format!("{card} h3"), |t| t == name).await?;
        wait_text(browser, &format!("{card} .state"), |t| t == "live").await?;
        wait_text(browser, &format!("{card} .checkpoint"), |t| {
            shown_number(t) == Some(head)
        })
        .await?;
        wait_text(browser, &format!("{card} .lag"), |t| t == "0").await?;
        let module = client.status(name).await["module"]
            .as_str()
            .unwrap()
            .to_string();
        wait_text(browser, &format!("{card} .module-hash"), |t| {
            t.len() == 12 && module.starts_with(t)
        })
        .await?;
    }
    wait_text(browser, "#head", |t| shown_number(t) == Some(head)).await?;

    // The faulted projector: its state, the error and the failing event.
    let card = "article[data-projector='poison']";
    wait_text(browser, &format!("{card} .state"), |t| t == "faulted").await?;
    wait_text(browser, &format!("{card} .fault-message"), |t| {
        t.contains(&format!("poisoned event {poison_position}"))
    })
    .await?;
    wait_text(browser, &format!("{card} .fault-event"), |t| {
        t == format!("failing event #{poison_position} · N · stream p-1")
    })
    .await?;
    wait_text(browser, &format!("{card} .checkpoint"), |t| {
        shown_number(t) == Some(poison_position - 1)
    })
    .await?;
    // The one that skips it: live, one dead letter, listed.
    let card = "article[data-projector='poison-skip']";
    wait_text(browser, &format!("{card} .state"), |t| t == "live").await?;
    wait_text(browser, &format!("{card} .dead-count"), |t| t == "1").await?;
    wait_text(browser, &format!("{card} .dead-letters summary"), |t| {
        t == "1 dead letter"
    })
    .await?;
    click(browser, &format!("{card} .dead-letters summary")).await?;
    wait_text(browser, &format!("{card} .dead-letters td"), |t| {
        shown_number(t) == Some(poison_position)
    })
    .await?;
    // The failing event's stream opens in the stream browser, the event highlighted.
    click(
        browser,
        "article[data-projector='poison'] .fault-event button",
    )
    .await?;
    wait_text(browser, "#stream-meta", |t| t == "p-1 · version 3").await?;
    wait_text(
        browser,
        "#stream-events .event.highlight .event-version",
        |t| t == "v2",
    )
    .await?;

    // The view browser: event-counter's counts by type, as pretty JSON.
    browser
        .find(Locator::Css("#view-projector"))
        .await?
        .select_by_value("event-counter")
        .await?;
    let prefix = browser.find(Locator::Css("#view-prefix")).await?;
    prefix.clear().await?;
    prefix.send_keys("type/").await?;
    click(browser, "#view-form button[type=submit]").await?;
    let row = "#view-rows tr[data-key='type/OrderPlaced'] pre";
    wait_text(browser, row, |t| t == "4").await?;
    let keys = texts(browser, "#view-rows tr td.col-key").await?;
    // The history's types (each with its count checked by examples.rs), and the poison's N.
    let mut expected: Vec<String> = common::expected_view("event-counter")
        .keys()
        .filter(|k| k.starts_with("type/"))
        .cloned()
        .chain(["type/N".to_string()])
        .collect();
    expected.sort();
    if keys != expected {
        bail!("the view browser shows keys {keys:?}, expected {expected:?}");
    }
    // An object value is pretty-printed.
    browser
        .find(Locator::Css("#view-projector"))
        .await?
        .select_by_value("order-totals")
        .await?;
    let prefix = browser.find(Locator::Css("#view-prefix")).await?;
    prefix.clear().await?;
    prefix.send_keys("customer/").await?;
    click(browser, "#view-form button[type=submit]").await?;
    let c1 = wait_text(browser, "#view-rows tr[data-key='customer/c1'] pre", |t| {
        t.contains('\n')
    })
    .await?;
    let c1: Value = serde_json::from_str(&c1).context("the value shown is JSON")?;
    if c1 != json!({"orders": 1, "total_cents": 1000, "cancelled": 1}) {
        bail!("customer/c1 shows {c1}");
    }

    // The stream browser: pick account-a1 in the list of streams.
    click(browser, "#stream-list li[data-stream='account-a1'] button").await?;
    wait_text(browser, "#stream-meta", |t| t == "account-a1 · version 5").await?;
    let types = texts(browser, "#stream-events .event-type").await?;
    let expected = [
        "AccountOpened",
        "Deposited",
        "Withdrawn",
        "TransferMade",
        "TransferMade",
    ];
    if types != expected {
        bail!("the stream browser shows {types:?}, expected {expected:?}");
    }
    let first = texts(browser, "#stream-events .event pre.json").await?;
    let opened: Value = serde_json::from_str(first.first().context("no event shown")?)?;
    if opened != json!({"account": "a1", "owner": "Ada"}) {
        bail!("the first event of account-a1 shows {opened}");
    }

    // Live: append 40 more events; every checkpoint on the page follows without a reload.
    // (30 in one stream to page through it, one each in ten new categories so that
    // event-counter's view spans two pages.)
    common::append_many(client, "clicks-1", "Clicked", 30, 10).await;
    let mut new_head = 0;
    for i in 0..10 {
        let event = json!([{"type": "Visited", "data": {"i": i}}]);
        new_head = client.append(&format!("k{i}-1"), event).await["last_position"]
            .as_u64()
            .unwrap();
    }
    for name in EXAMPLES {
        let card = format!("article[data-projector='{name}']");
        wait_text(browser, &format!("{card} .checkpoint"), |t| {
            shown_number(t) == Some(new_head)
        })
        .await?;
        wait_text(browser, &format!("{card} .state"), |t| t == "live").await?;
    }
    wait_text(browser, "#head", |t| shown_number(t) == Some(new_head)).await?;
    // The new streams join the stream list by themselves.
    wait_text(browser, "#stream-list li[data-stream='k9-1']", |t| {
        t.split_whitespace().eq(["k9-1", "1"])
    })
    .await?;

    // The new stream, read by name and paged with the `next` cursor.
    let name = browser.find(Locator::Css("#stream-name")).await?;
    name.clear().await?;
    name.send_keys("clicks-1").await?;
    let from = browser.find(Locator::Css("#stream-from")).await?;
    from.clear().await?;
    from.send_keys("1").await?;
    click(browser, "#stream-form button[type=submit]").await?;
    wait_text(browser, "#stream-page", |t| t == "versions 1–20 of 30").await?;
    click(browser, "#stream-next").await?;
    wait_text(browser, "#stream-page", |t| t == "versions 21–30 of 30").await?;
    let versions = texts(browser, "#stream-events .event-version").await?;
    let expected: Vec<String> = (21..=30).map(|v| format!("v{v}")).collect();
    if versions != expected {
        bail!("page 2 of clicks-1 shows {versions:?}");
    }
    let next = browser.find(Locator::Css("#stream-next")).await?;
    if next.is_enabled().await? {
        bail!("Next stays enabled on the last page");
    }

    // event-counter's whole view, in two pages (the scan's `next` cursor), as the API has it.
    browser
        .find(Locator::Css("#view-projector"))
        .await?
        .select_by_value("event-counter")
        .await?;
    browser
        .find(Locator::Css("#view-prefix"))
        .await?
        .clear()
        .await?;
    click(browser, "#view-form button[type=submit]").await?;
    wait_text(browser, "#view-rows tr[data-key='total'] pre", |t| {
        shown_number(t) == Some(new_head)
    })
    .await?;
    let first = client
        .get("/projectors/event-counter/view?limit=20")
        .await
        .body;
    let api_keys = |page: &Value| -> Vec<String> {
        page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|item| item["key"].as_str().unwrap().to_string())
            .collect()
    };
    let cursor = first["next"].as_str().context("the view spans two pages")?;
    let second = client
        .get(&format!(
            "/projectors/event-counter/view?limit=20&after={cursor}"
        ))
        .await
        .body;
    let shown = texts(browser, "#view-rows td.col-key").await?;
    if shown != api_keys(&first) {
        bail!("page 1 of event-counter shows {shown:?}, the API {first}");
    }
    click(browser, "#view-next").await?;
    wait_text(browser, "#view-page", |t| t == "page 2").await?;
    let shown = texts(browser, "#view-rows td.col-key").await?;
    if shown != api_keys(&second) || second["next"] != Value::Null {
        bail!("page 2 of event-counter shows {shown:?}, the API {second}");
    }
    if browser
        .find(Locator::Css("#view-next"))
        .await?
        .is_enabled()
        .await?
    {
        bail!("Next stays enabled on the view's last page");
    }
    click(browser, "#view-prev").await?;
    wait_text(browser, "#view-page", |t| t == "page 1").await?;
    wait_text(
        browser,
        "#view-rows tr[data-key='category/account'] pre",
        |t| t == "8",
    )
    .await?;

    // A last look for the screenshot: order-totals' whole view, and account-a1's events.
    browser
        .find(Locator::Css("#view-projector"))
        .await?
        .select_by_value("order-totals")
        .await?;
    click(browser, "#view-form button[type=submit]").await?;
    wait_text(browser, "#view-rows tr[data-key='stats'] pre", |t| {
        t.contains("\"ignored\": 3")
    })
    .await?;
    click(browser, "#stream-list li[data-stream='account-a1'] button").await?;
    wait_text(browser, "#stream-meta", |t| t == "account-a1 · version 5").await?;
    Ok(())
}

/// Against a Prism whose reads need a token: the page loads, says it needs one, and works once
/// one is pasted; the token survives a reload (localStorage).
async fn check_token_flow(browser: &Browser, client: &common::Client) -> Result<()> {
    browser.goto(&client.url("/")).await?;
    wait_text(browser, "#conn", |t| t == "token needed").await?;
    if !browser
        .find(Locator::Css("#token-panel"))
        .await?
        .is_displayed()
        .await?
    {
        bail!("the token panel is not shown after a 401");
    }
    let path = artifact("dashboard-token.png");
    std::fs::write(&path, browser.screenshot().await?)?;
    let input = browser.find(Locator::Css("#token-input")).await?;
    input.clear().await?;
    input.send_keys("let-me-read").await?;
    click(browser, "#token-form button[type=submit]").await?;
    wait_text(browser, "#conn", |t| t.starts_with("live")).await?;
    wait_text(browser, "#no-projectors", |t| t.starts_with("No projector")).await?;
    browser.refresh().await?;
    wait_text(browser, "#conn", |t| t.starts_with("live")).await?;
    Ok(())
}

/// The number a page shows, read past its thousands separators.
fn shown_number(text: &str) -> Option<u64> {
    text.replace(',', "").parse().ok()
}

/// Waits until the first element matching `css` shows a text `check` accepts; returns it.
async fn wait_text(browser: &Browser, css: &str, check: impl Fn(&str) -> bool) -> Result<String> {
    let deadline = Instant::now() + PATIENCE;
    let mut last = None;
    loop {
        if let Ok(element) = browser.find(Locator::Css(css)).await {
            match element.text().await {
                Ok(text) if check(text.trim()) => return Ok(text.trim().to_string()),
                Ok(text) => last = Some(text),
                // The element was replaced between find and text: look again.
                Err(_) => {}
            }
        }
        if Instant::now() > deadline {
            bail!(
                "after {} s, {css} shows {:?}",
                PATIENCE.as_secs(),
                last.as_deref().unwrap_or("nothing (no such element)")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The texts of every element matching `css`, in page order (read again when the page
/// replaced an element while it was being read).
async fn texts(browser: &Browser, css: &str) -> Result<Vec<String>> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let read = async {
            let mut out = Vec::new();
            for element in browser.find_all(Locator::Css(css)).await? {
                out.push(element.text().await?.trim().to_string());
            }
            Ok::<_, fantoccini::error::CmdError>(out)
        };
        match read.await {
            Ok(out) => return Ok(out),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// Clicks the element matching `css`, finding it again when the page replaced it between the
/// find and the click (the dashboard re-renders as the projectors change).
async fn click(browser: &Browser, css: &str) -> Result<()> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let clicked = async { browser.find(Locator::Css(css)).await?.click().await };
        match clicked.await {
            Ok(()) => return Ok(()),
            Err(e) if Instant::now() > deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// `target/test-artifacts/<file>`, under `CARGO_TARGET_DIR` when set; the directory is created.
fn artifact(file: &str) -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    };
    let dir = target.join("test-artifacts");
    std::fs::create_dir_all(&dir).expect("creating target/test-artifacts");
    dir.join(file)
}

/// Makes sure Debian's Chromium and chromedriver are installed: installs them with apt-get
/// when they are missing and we are root; panics with what to do otherwise.
fn ensure_chromium() {
    let present = || Path::new(CHROMIUM).is_file() && Path::new(CHROMEDRIVER).is_file();
    if present() {
        return;
    }
    let root = prism_toolchain::is_root();
    let apt = Path::new("/usr/bin/apt-get").is_file();
    prism_toolchain::apt_install(&PACKAGES);
    assert!(
        present(),
        "the dashboard test needs Debian's Chromium and chromedriver ({CHROMIUM}, {CHROMEDRIVER}) \
         and could not install them{}: run `apt-get install -y {}` as root",
        if !root {
            " (not running as root)"
        } else if !apt {
            " (no apt-get)"
        } else {
            " (apt-get install failed)"
        },
        PACKAGES.join(" ")
    );
}

/// A chromedriver on a free loopback port, killed when dropped.
struct Chromedriver {
    child: Child,
    port: u16,
    profile: tempfile::TempDir,
}

impl Chromedriver {
    fn start() -> Chromedriver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        // In its own process group, so that dropping it also ends the Chromium it started.
        let child = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {CHROMEDRIVER}: {e}"));
        Chromedriver {
            child,
            port,
            profile: tempfile::tempdir().expect("a profile dir"),
        }
    }

    /// Waits for chromedriver to be ready, then opens a headless Chromium session.
    async fn connect(&self) -> Browser {
        let url = format!("http://127.0.0.1:{}", self.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        let http = reqwest::Client::new();
        loop {
            let ready = http.get(format!("{url}/status")).send().await;
            if let Ok(reply) = ready
                && let Ok(body) = reply.json::<Value>().await
                && body["value"]["ready"] == true
            {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "chromedriver did not answer on {url} within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let profile = self.profile.path().display();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-quic",
                    "--no-first-run",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--disable-dev-shm-usage",
                    "--window-size=1440,1900",
                    format!("--user-data-dir={profile}"),
                ],
            },
        });
        let Value::Object(capabilities) = capabilities else {
            unreachable!()
        };
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("opening a Chromium session through chromedriver: {e}"))
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
