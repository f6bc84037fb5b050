//! A real headless Chromium for tests that look at a page as a person would.
//!
//! 1. `CHROMIUM`, when set (`scripts/tool.sh chromium` installs Debian's package and prints it).
//! 2. Otherwise `/usr/bin/chromium`, when it exists.
//! 3. Otherwise no browser: under `CI=true` the test fails; elsewhere it is skipped with a
//!    loud message on stderr (as [`super::broker`] does for Kafka).
//!
//! Driven over the DevTools protocol with `chromiumoxide`; each browser gets a fresh
//! profile directory, removed when it closes.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use chromiumoxide::browser::{Browser, BrowserConfig};
use chromiumoxide::page::{Page, ScreenshotParams};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";

/// The Chromium binary for this run, or `None` (after saying so loudly) when there is none
/// and the run is not CI. Panics under `CI=true` without one.
pub fn chromium() -> Option<PathBuf> {
    let found = match std::env::var("CHROMIUM") {
        Ok(path) if !path.trim().is_empty() => {
            let path = PathBuf::from(path);
            if path.exists() {
                Ok(path)
            } else {
                Err(format!("CHROMIUM={} does not exist", path.display()))
            }
        }
        _ if Path::new(DEFAULT_CHROMIUM).exists() => Ok(PathBuf::from(DEFAULT_CHROMIUM)),
        _ => Err(format!(
            "CHROMIUM is not set and {DEFAULT_CHROMIUM} does not exist"
        )),
    };
    match found {
        Ok(path) => Some(path),
        Err(why) => {
            crate::helpers::missing(
                "Chromium",
                &why,
                "Run `scripts/tool.sh chromium` (or `scripts/test.sh`), or set CHROMIUM.",
            );
            None
        }
    }
}

/// A running headless Chromium.
pub struct HeadlessChromium {
    browser: Browser,
    handler: JoinHandle<()>,
    profile: PathBuf,
}

impl HeadlessChromium {
    /// Starts the browser at `path` with a fresh profile and a 1280×1000 window.
    pub async fn launch(path: &Path) -> Self {
        let profile =
            std::env::temp_dir().join(format!("flatpack-chromium-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&profile).expect("browser profile directory");
        let config = BrowserConfig::builder()
            .chrome_executable(path)
            .disable_default_args()
            .no_sandbox() // as root, the sandbox refuses to start
            .user_data_dir(&profile)
            .args([
                "disable-gpu",
                "disable-quic",
                "no-first-run",
                "disable-background-networking",
                "disable-component-update",
                "disable-sync",
                "disable-dev-shm-usage",
                "disable-extensions",
            ])
            .window_size(1280, 1000)
            .viewport(None)
            .launch_timeout(Duration::from_secs(60))
            .build()
            .expect("browser config");
        let (browser, mut events) = Browser::launch(config)
            .await
            .expect("launching headless Chromium");
        // The protocol connection is driven by polling this stream; some messages of newer
        // Chromium versions do not parse, which is harmless, so errors do not end it.
        let handler = tokio::spawn(async move { while events.next().await.is_some() {} });
        Self {
            browser,
            handler,
            profile,
        }
    }

    /// Opens `url` in a new tab and waits for it to load.
    pub async fn open(&self, url: &str) -> Page {
        self.browser.new_page(url).await.expect("opening the page")
    }

    pub async fn close(mut self) {
        let _ = self.browser.close().await;
        let _ = self.browser.wait().await;
        self.handler.abort();
        let _ = std::fs::remove_dir_all(&self.profile);
    }
}

/// Evaluates `expression` in the page and returns its value.
pub async fn eval<T: DeserializeOwned>(page: &Page, expression: &str) -> T {
    page.evaluate(expression)
        .await
        .unwrap_or_else(|err| panic!("evaluating {expression}: {err}"))
        .into_value()
        .unwrap_or_else(|err| panic!("reading the value of {expression}: {err}"))
}

/// Waits until the JavaScript `condition` is true in the page; panics naming `what` after
/// `deadline`.
pub async fn wait_until(page: &Page, what: &str, deadline: Duration, condition: &str) {
    let until = Instant::now() + deadline;
    loop {
        if eval::<bool>(page, &format!("Boolean({condition})")).await {
            return;
        }
        assert!(
            Instant::now() < until,
            "timed out after {deadline:?} waiting until the page shows {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Saves a full-page PNG screenshot to `path` (its directory is created).
pub async fn screenshot(page: &Page, path: &Path) {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).expect("screenshot directory");
    }
    page.save_screenshot(ScreenshotParams::builder().full_page(true).build(), path)
        .await
        .expect("saving a screenshot");
    eprintln!("screenshot saved to {}", path.display());
}
