//! A headless Chromium driven over W3C WebDriver (Debian's `chromium` and `chromium-driver`,
//! which `make test` installs when missing): the dozen commands the portal's browser tests
//! use, each a JSON request over a connection of its own, rather than a WebDriver crate and
//! its dependencies.

use serde_json::{json, Value};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// One WebDriver request: (status, JSON answer); status 0 when nothing answers.
/// chromedriver keeps a connection open whatever the request asks, so the answer is read by
/// its `Content-Length`, not to the end of the stream.
async fn wd(method: &str, url: &str, body: Option<&Value>) -> (u16, Value) {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};
    let rest = url.strip_prefix("http://").unwrap();
    let (host, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_owned()), |(h, p)| (h, format!("/{p}")));
    let Ok(stream) = tokio::net::TcpStream::connect(host).await else {
        return (0, Value::Null);
    };
    let mut stream = tokio::io::BufReader::new(stream);
    let body = body.map(Value::to_string).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    stream
        .get_mut()
        .write_all(request.as_bytes())
        .await
        .unwrap();
    let (mut status, mut length) = (0, 0);
    loop {
        let mut line = String::new();
        if stream.read_line(&mut line).await.unwrap() == 0 {
            return (0, Value::Null);
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if status == 0 {
            status = line
                .split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
        } else if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut raw = vec![0; length];
    stream.read_exact(&mut raw).await.unwrap();
    (status, serde_json::from_slice(&raw).unwrap_or(Value::Null))
}

/// The key WebDriver names an element by.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

pub struct Browser {
    driver: Child,
    /// `http://127.0.0.1:<port>/session/<id>`.
    session: String,
    /// Whether [`Browser::click`], [`Browser::fill`] and [`Browser::choose`] use the keyboard
    /// alone: Tab until the control has the focus, then Enter, Space, arrows or typing.
    keys_only: bool,
}

/// WebDriver's codes of the keys the keyboard mode presses.
const TAB: &str = "\u{e004}";
const ENTER: &str = "\u{e007}";
const SPACE: &str = "\u{e00d}";
const BACKSPACE: &str = "\u{e003}";
const CONTROL: &str = "\u{e009}";
const ARROW_DOWN: &str = "\u{e015}";
const ARROW_UP: &str = "\u{e013}";
/// Tabs tried before a control counts as not reachable by keyboard.
const TABS_MAX: usize = 200;

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the browser with its session (chromedriver then stops it), then the driver.
        let session = self.session.clone();
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(wd("DELETE", &session, None))
        })
        .join();
        super::kill9(&mut self.driver);
    }
}

fn found(name: &str, candidates: &[&str]) -> String {
    candidates
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|p| (*p).to_owned())
        .unwrap_or_else(|| {
            panic!(
                "{name} is not installed (looked at {candidates:?}): `make test` installs Debian's chromium and chromium-driver; or apt-get install chromium chromium-driver"
            )
        })
}

impl Browser {
    /// Starts chromedriver on a free port and a headless Chromium session through it, with
    /// its console kept for [`Browser::console_errors`].
    pub async fn start() -> Self {
        Self::start_in("en-US").await
    }

    /// [`Browser::start`] with `lang` as the browser's language: its Accept-Language and
    /// `navigator.language`.
    pub async fn start_in(lang: &str) -> Self {
        let driver_bin = found(
            "chromedriver",
            &["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"],
        );
        let chromium = found(
            "chromium",
            &["/usr/bin/chromium", "/usr/lib/chromium/chromium"],
        );
        let port = gancho_test_harness::nats::free_port();
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        gancho_test_harness::wait_until(
            "chromedriver to answer",
            Duration::from_secs(20),
            || async {
                let (status, v) = wd("GET", &format!("{base}/status"), None).await;
                status == 200 && v["value"]["ready"] == json!(true)
            },
        )
        .await;
        let capabilities = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "unhandledPromptBehavior": "ignore",
            "goog:loggingPrefs": {"browser": "ALL"},
            "goog:chromeOptions": {
                "binary": chromium,
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--disable-gpu", "--window-size=1280,1000", format!("--lang={lang}")],
                "prefs": {"intl.accept_languages": lang},
            },
        }}});
        let (status, v) = wd("POST", &format!("{base}/session"), Some(&capabilities)).await;
        assert_eq!(status, 200, "a Chromium session: {v}");
        let id = v["value"]["sessionId"].as_str().unwrap().to_owned();
        Self {
            driver,
            session: format!("{base}/session/{id}"),
            keys_only: false,
        }
    }

    /// From now on, act with the keyboard alone (`true`) or with the mouse (`false`).
    pub fn keyboard(&mut self, on: bool) {
        self.keys_only = on;
    }

    /// Presses and releases each key of `keys` in turn (characters, or the codes above).
    async fn press(&self, keys: &[&str]) {
        let actions: Vec<Value> = keys
            .iter()
            .flat_map(|k| {
                [
                    json!({"type": "keyDown", "value": k}),
                    json!({"type": "keyUp", "value": k}),
                ]
            })
            .collect();
        self.command(
            "POST",
            "/actions",
            Some(json!({"actions": [{"type": "key", "id": "keyboard", "actions": actions}]})),
        )
        .await;
    }

    /// Types `text` into the focused control, one key at a time.
    async fn type_text(&self, text: &str) {
        let keys: Vec<String> = text.chars().map(String::from).collect();
        let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
        self.press(&keys).await;
    }

    /// Presses Tab until element `id` has the focus; fails if it never gets it.
    async fn tab_to(&self, id: &str) {
        for _ in 0..TABS_MAX {
            let focused = self
                .run(
                    "return document.activeElement === arguments[0]",
                    json!([{ ELEMENT: id }]),
                )
                .await;
            if focused == json!(true) {
                return;
            }
            self.press(&[TAB]).await;
        }
        let what = self
            .run("return arguments[0].outerHTML", json!([{ ELEMENT: id }]))
            .await;
        panic!("{what} is not reached with Tab in {TABS_MAX} presses");
    }

    /// Chooses the option whose text contains `option` in the select labelled `label`: with
    /// the mouse, a click on the option; with the keyboard, arrows down until it is chosen.
    pub async fn choose(&self, label: &str, option: &str) {
        let select = self.labelled(label).await;
        if !self.keys_only {
            let id = self
                .run(
                    "return [...arguments[0].options].find((o) => o.text.includes(arguments[1])) || null",
                    json!([{ ELEMENT: select }, option]),
                )
                .await;
            let id = id[ELEMENT]
                .as_str()
                .unwrap_or_else(|| panic!("no option {option:?} in {label}"))
                .to_owned();
            self.command("POST", &format!("/element/{id}/click"), Some(json!({})))
                .await;
            return;
        }
        self.tab_to(&select).await;
        for _ in 0..20 {
            // How far the option is from the chosen one: arrows up or down by that much.
            let distance = self
                .run(
                    "const s = arguments[0]; const i = [...s.options].findIndex((o) => o.text.includes(arguments[1])); return i < 0 ? null : i - s.selectedIndex",
                    json!([{ ELEMENT: select }, option]),
                )
                .await;
            match distance.as_i64() {
                None => panic!("no option {option:?} in {label}"),
                Some(0) => return,
                Some(d) if d > 0 => self.press(&[ARROW_DOWN]).await,
                Some(_) => self.press(&[ARROW_UP]).await,
            }
        }
        panic!("the arrows never chose {option:?} in {label}");
    }

    /// The field a `<label>` whose text contains `label` names.
    async fn labelled(&self, label: &str) -> String {
        let label_id = self.wait_for("label", label).await;
        let target = self
            .command("GET", &format!("/element/{label_id}/attribute/for"), None)
            .await;
        let target = target.as_str().expect("the label names its field");
        self.wait_for(&format!("#{target}"), "").await
    }

    /// Shows the page inside the first `<iframe>` to the commands that follow (WebDriver's
    /// frame switch); [`Browser::top`] goes back to the page itself.
    pub async fn enter_frame(&self) {
        let frame = self.wait_for("iframe", "").await;
        self.command("POST", "/frame", Some(json!({"id": { ELEMENT: frame }})))
            .await;
    }

    pub async fn top(&self) {
        self.command("POST", "/frame", Some(json!({"id": null})))
            .await;
    }

    async fn command(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, v) = wd(method, &format!("{}{path}", self.session), body.as_ref()).await;
        assert_eq!(status, 200, "WebDriver {method} {path}: {v}");
        v["value"].clone()
    }

    pub async fn goto(&self, url: &str) {
        self.command("POST", "/url", Some(json!({ "url": url })))
            .await;
    }

    /// Loads the page again, as the browser's reload button does.
    pub async fn refresh(&self) {
        self.command("POST", "/refresh", Some(json!({}))).await;
    }

    pub async fn back(&self) {
        self.command("POST", "/back", Some(json!({}))).await;
    }

    pub async fn url(&self) -> String {
        self.command("GET", "/url", None)
            .await
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// The elements matching a CSS selector now.
    pub async fn all(&self, css: &str) -> Vec<String> {
        self.command(
            "POST",
            "/elements",
            Some(json!({"using": "css selector", "value": css})),
        )
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e[ELEMENT].as_str().unwrap().to_owned())
        .collect()
    }

    /// The first element matching `css` whose text contains `text`, waiting up to 10 s.
    pub async fn wait_for(&self, css: &str, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            for id in self.all(css).await {
                if self.element_text(&id).await.contains(text) {
                    return id;
                }
            }
            if Instant::now() > deadline {
                let body = self.text("body").await;
                panic!("no {css} with {text:?} within 10 s; the page says:\n{body}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn element_text(&self, id: &str) -> String {
        // An element replaced meanwhile is gone: no text.
        let (status, v) = wd("GET", &format!("{}/element/{id}/text", self.session), None).await;
        if status == 200 {
            v["value"].as_str().unwrap_or_default().to_owned()
        } else {
            String::new()
        }
    }

    /// The visible text of the first element matching `css` ("" when there is none).
    pub async fn text(&self, css: &str) -> String {
        match self.all(css).await.first() {
            Some(id) => self.element_text(id).await,
            None => String::new(),
        }
    }

    /// Clicks the first `css` element whose text contains `text` (waiting for it); with the
    /// keyboard, Tab to it and Enter (Space for a checkbox).
    pub async fn click(&self, css: &str, text: &str) {
        let id = self.wait_for(css, text).await;
        if self.keys_only {
            self.tab_to(&id).await;
            let checkbox = self
                .run(
                    "return arguments[0].type === 'checkbox'",
                    json!([{ ELEMENT: id }]),
                )
                .await;
            self.press(&[if checkbox == json!(true) {
                SPACE
            } else {
                ENTER
            }])
            .await;
            return;
        }
        self.command("POST", &format!("/element/{id}/click"), Some(json!({})))
            .await;
    }

    /// Types into the field labelled `label` (the `<label for>` whose text contains it); with
    /// the keyboard, Tab to it, select all, erase and type.
    pub async fn fill(&self, label: &str, value: &str) {
        let field = self.labelled(label).await;
        if self.keys_only {
            self.tab_to(&field).await;
            let actions = json!({"actions": [{"type": "key", "id": "keyboard", "actions": [
                {"type": "keyDown", "value": CONTROL}, {"type": "keyDown", "value": "a"},
                {"type": "keyUp", "value": "a"}, {"type": "keyUp", "value": CONTROL},
                {"type": "keyDown", "value": BACKSPACE}, {"type": "keyUp", "value": BACKSPACE},
            ]}]});
            self.command("POST", "/actions", Some(actions)).await;
            self.type_text(value).await;
            return;
        }
        self.command("POST", &format!("/element/{field}/clear"), Some(json!({})))
            .await;
        self.command(
            "POST",
            &format!("/element/{field}/value"),
            Some(json!({ "text": value })),
        )
        .await;
    }

    /// Runs `script` in the page (`arguments` are `args`) and returns what it returns.
    pub async fn run(&self, script: &str, args: Value) -> Value {
        self.command(
            "POST",
            "/execute/sync",
            Some(json!({"script": script, "args": args})),
        )
        .await
    }

    /// The text of an open alert, confirm or prompt dialog, if one is open.
    pub async fn dialog(&self) -> Option<String> {
        let (status, v) = wd("GET", &format!("{}/alert/text", self.session), None).await;
        (status == 200).then(|| v["value"].as_str().unwrap_or_default().to_owned())
    }

    /// What the page logged at the error level since the last call (script errors, blocked
    /// content, Content-Security-Policy and Trusted Types violations, failed requests).
    pub async fn console_errors(&self) -> Vec<String> {
        self.command("POST", "/se/log", Some(json!({"type": "browser"})))
            .await
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["level"] == json!("SEVERE"))
            .map(|e| e["message"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// The serious and critical accessibility violations axe-core finds on the page as it is
    /// now, one line each (rule, impact, what it says, the elements). axe-core comes from npm
    /// into `.tools/` (`make test` installs it; `GANCHO_AXE_CORE` is its `axe.min.js`).
    pub async fn accessibility_violations(&self) -> Vec<String> {
        let path = std::env::var("GANCHO_AXE_CORE").unwrap_or_else(|_| {
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../.tools/npm/node_modules/axe-core/axe.min.js"
            )
            .to_owned()
        });
        let axe = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!("axe-core is not at {path} ({e}): `make test` installs it (npm install --prefix .tools/npm axe-core)")
        });
        // Loaded into the page from the test, not from the page: the page's own policy lets
        // no script in but its own.
        self.run(&format!("{axe}\n;return true"), json!([])).await;
        let found = self
            .command(
                "POST",
                "/execute/async",
                Some(json!({"script": "const done = arguments[arguments.length - 1];
                    axe.run(document, { resultTypes: ['violations'] })
                      .then((r) => done(r.violations
                        .filter((v) => v.impact === 'serious' || v.impact === 'critical')
                        .map((v) => `${v.id} (${v.impact}): ${v.help}: ${v.nodes.map((n) => n.target.join(' ')).join(', ')}`)))
                      .catch((e) => done([`axe failed: ${e}`]));", "args": []})),
            )
            .await;
        found
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Saves a PNG of the page to `target/portal-screenshots/<name>.png`.
    pub async fn screenshot(&self, name: &str) {
        use base64::Engine as _;
        let png = self.command("GET", "/screenshot", None).await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap())
            .unwrap();
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../target/portal-screenshots");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("{name}.png")), png).unwrap();
    }
}
