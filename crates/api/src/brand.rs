//! The portal's branding and languages. An operator names the portal
//! (`GANCHO_PORTAL_TITLE`), gives it an accent colour (`GANCHO_PORTAL_ACCENT`, served as a
//! generated stylesheet, never inline) and a logo (`GANCHO_PORTAL_LOGO`, PNG or SVG, at most
//! 64 KiB, read once at start-up). Everything is checked at start-up: a bad value stops the
//! api with one line. The page's words come from a catalog per language
//! (`portal/strings/*.json`), picked by Accept-Language or asked for by name.

/// The longest logo file.
pub const LOGO_MAX: usize = 64 * 1024;
/// The longest title, in characters.
const TITLE_MAX: usize = 60;
/// The least contrast of the accent against white: links are drawn in it (WCAG AA).
const CONTRAST_MIN: f64 = 4.5;

/// A logo, as read and checked at start-up.
#[derive(Clone, Debug)]
pub struct Logo {
    pub content_type: &'static str,
    pub bytes: bytes::Bytes,
}

/// What the portal looks like.
#[derive(Clone, Debug)]
pub struct Brand {
    pub title: String,
    /// `#rrggbb`, lower case.
    pub accent: Option<String>,
    pub logo: Option<Logo>,
}

impl Default for Brand {
    fn default() -> Self {
        Self {
            title: "Webhooks".into(),
            accent: None,
            logo: None,
        }
    }
}

impl Brand {
    /// Checks the settings: the error is the one line start-up prints (it names the key).
    pub fn new(
        title: Option<&str>,
        accent: Option<&str>,
        logo: Option<&std::path::Path>,
    ) -> Result<Self, String> {
        let mut brand = Self::default();
        if let Some(t) = title.map(str::trim).filter(|t| !t.is_empty()) {
            if t.chars().count() > TITLE_MAX || t.chars().any(char::is_control) {
                return Err(format!(
                    "invalid portal_title: at most {TITLE_MAX} characters, no control characters"
                ));
            }
            brand.title = t.to_owned();
        }
        if let Some(a) = accent.map(str::trim).filter(|a| !a.is_empty()) {
            brand.accent = Some(check_accent(a)?);
        }
        if let Some(path) = logo {
            let bytes = std::fs::read(path).map_err(|e| {
                format!(
                    "invalid portal_logo {}: cannot read it: {e}",
                    path.display()
                )
            })?;
            brand.logo = Some(
                check_logo(&bytes)
                    .map(|content_type| Logo {
                        content_type,
                        bytes: bytes.into(),
                    })
                    .map_err(|why| format!("invalid portal_logo {}: {why}", path.display()))?,
            );
        }
        Ok(brand)
    }

    /// The page, with the title (escaped) and the logo's address filled in.
    pub fn page(&self) -> String {
        include_str!("../portal/index.html")
            .replace("{{title}}", &escape_html(&self.title))
            .replace(
                "{{logo}}",
                if self.logo.is_some() {
                    "logo"
                } else {
                    "icon.svg"
                },
            )
    }

    /// `brand.css`: the accent, when one is set.
    pub fn stylesheet(&self) -> String {
        match &self.accent {
            Some(a) => format!(":root {{ --accent: {a}; }}\n"),
            None => "/* no accent set: app.css's own */\n".into(),
        }
    }
}

/// `#rrggbb` only, dark enough to read as text on white.
fn check_accent(a: &str) -> Result<String, String> {
    let hex = a
        .strip_prefix('#')
        .filter(|h| h.len() == 6 && h.chars().all(|c| c.is_ascii_hexdigit()))
        .ok_or_else(|| format!("invalid portal_accent {a:?}: a colour as #rrggbb, like #0b6e4f"))?;
    let channel = |i: usize| {
        let v = f64::from(u8::from_str_radix(&hex[i..i + 2], 16).expect("checked hex")) / 255.0;
        if v <= 0.039_28 {
            v / 12.92
        } else {
            ((v + 0.055) / 1.055).powf(2.4)
        }
    };
    let luminance = 0.2126 * channel(0) + 0.7152 * channel(2) + 0.0722 * channel(4);
    let contrast = 1.05 / (luminance + 0.05);
    if contrast < CONTRAST_MIN {
        return Err(format!(
            "invalid portal_accent {a}: too light to read on white (contrast {contrast:.1}:1, links need {CONTRAST_MIN}:1); choose a darker colour"
        ));
    }
    Ok(format!("#{}", hex.to_ascii_lowercase()))
}

/// PNG by its signature, or an SVG with nothing in it that could run or fetch: the content
/// type it is served with, or why it is refused.
fn check_logo(bytes: &[u8]) -> Result<&'static str, String> {
    if bytes.len() > LOGO_MAX {
        return Err(format!(
            "{} bytes, more than {} KiB",
            bytes.len(),
            LOGO_MAX / 1024
        ));
    }
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Ok("image/png");
    }
    let text = std::str::from_utf8(bytes)
        .map_err(|_| "neither a PNG nor an SVG (UTF-8 text)".to_owned())?
        .to_ascii_lowercase();
    if !text.contains("<svg") {
        return Err("neither a PNG nor an SVG (no <svg> element)".into());
    }
    for (needle, what) in [
        ("<script", "a script"),
        ("<foreignobject", "foreignObject (HTML inside the SVG)"),
        ("<!doctype", "a DOCTYPE (entities)"),
        ("<!entity", "an entity declaration"),
        ("<iframe", "an iframe"),
        ("<embed", "an embed"),
        ("<object", "an object"),
        ("<handler", "an event handler"),
        ("<listener", "an event listener"),
        ("javascript:", "a javascript: URL"),
        ("data:text", "an embedded document (data:text)"),
    ] {
        if text.contains(needle) {
            return Err(format!("the SVG holds {what}; remove it"));
        }
    }
    if let Some(attr) = event_attribute(&text) {
        return Err(format!(
            "the SVG holds an event handler ({attr}=); remove it"
        ));
    }
    if let Some(link) = outside_reference(&text) {
        return Err(format!(
            "the SVG refers to something outside itself ({link}); embed it or remove it"
        ));
    }
    Ok("image/svg+xml")
}

/// The first `on…=` attribute (`onload=`, `onclick =`) inside a tag, if any.
fn event_attribute(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut in_tag = false;
    for i in 0..b.len() {
        match b[i] {
            b'<' => in_tag = true,
            b'>' => in_tag = false,
            c if in_tag && c.is_ascii_whitespace() && text[i + 1..].starts_with("on") => {
                let name: String = text[i + 1..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                let rest = text[i + 1 + name.len()..].trim_start();
                if name.len() > 2 && rest.starts_with('=') {
                    return Some(name);
                }
            }
            _ => {}
        }
    }
    None
}

/// The first `href`/`xlink:href`/`src` or `url(...)` that is not a fragment of the file itself.
fn outside_reference(text: &str) -> Option<String> {
    for key in ["href=", "src="] {
        for (at, _) in text.match_indices(key) {
            let value = text[at + key.len()..].trim_start_matches(['"', '\'', ' ']);
            if !value.starts_with('#') {
                return Some(format!(
                    "{key}{}",
                    value.chars().take(40).collect::<String>()
                ));
            }
        }
    }
    for (at, _) in text.match_indices("url(") {
        let value = text[at + 4..].trim_start_matches(['"', '\'', ' ']);
        if !value.starts_with('#') {
            return Some(format!(
                "url({}",
                value.chars().take(40).collect::<String>()
            ));
        }
    }
    None
}

fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The languages of the portal: code, name in itself, catalog.
pub const LANGUAGES: [(&str, &str, &str); 2] = [
    ("en", "English", include_str!("../portal/strings/en.json")),
    (
        "pt-BR",
        "Português (Brasil)",
        include_str!("../portal/strings/pt-BR.json"),
    ),
];

/// The language to show: the one asked for by name (`?lang=`), else the first of
/// Accept-Language (by its q weights) that the portal has (`pt`, `pt-PT` and `pt-BR` all give
/// `pt-BR`), else English.
pub fn pick_language(asked: Option<&str>, accept_language: Option<&str>) -> &'static str {
    let known = |tag: &str| {
        let primary = tag.split(['-', '_']).next().unwrap_or("").trim();
        LANGUAGES
            .iter()
            .find(|(code, ..)| {
                code.eq_ignore_ascii_case(tag)
                    || code.split('-').next() == Some(primary) && !primary.is_empty()
            })
            .map(|(code, ..)| *code)
    };
    if let Some(code) = asked.and_then(|a| known(&a.to_ascii_lowercase())) {
        return code;
    }
    let mut ranked: Vec<(f32, &str)> = accept_language
        .unwrap_or("")
        .split(',')
        .filter_map(|part| {
            let mut bits = part.split(';');
            let tag = bits.next()?.trim().to_ascii_lowercase();
            let q = bits
                .find_map(|b| b.trim().strip_prefix("q="))
                .and_then(|q| q.parse::<f32>().ok())
                .unwrap_or(1.0);
            let code = known(&tag)?;
            (q > 0.0).then_some((q, code))
        })
        .collect();
    // Stable: equal weights keep the header's order.
    ranked.sort_by(|a, b| b.0.total_cmp(&a.0));
    ranked.first().map_or("en", |(_, code)| code)
}

/// `/portal/strings.json` bodies, one per language, built once:
/// `{"lang", "languages": [{"code", "name"}], "strings": {...}}`.
pub fn catalogs() -> &'static [(&'static str, bytes::Bytes)] {
    static BUILT: std::sync::OnceLock<Vec<(&'static str, bytes::Bytes)>> =
        std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let languages: Vec<_> = LANGUAGES
            .iter()
            .map(|(code, name, _)| serde_json::json!({"code": code, "name": name}))
            .collect();
        LANGUAGES
            .iter()
            .map(|(code, _, catalog)| {
                let strings: serde_json::Value =
                    serde_json::from_str(catalog).expect("the portal's catalogs are JSON (tested)");
                let body =
                    serde_json::json!({"lang": code, "languages": languages, "strings": strings});
                (*code, body.to_string().into())
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn catalog(code: &str) -> BTreeMap<String, serde_json::Value> {
        let (_, _, text) = LANGUAGES.iter().find(|(c, ..)| *c == code).unwrap();
        serde_json::from_str(text).unwrap_or_else(|e| panic!("strings/{code}.json: {e}"))
    }

    /// `{name}` placeholders of an entry (every form of a plural one).
    fn placeholders(v: &serde_json::Value) -> BTreeSet<String> {
        let texts: Vec<&str> = match v {
            serde_json::Value::String(s) => vec![s.as_str()],
            serde_json::Value::Object(forms) => forms.values().filter_map(|f| f.as_str()).collect(),
            _ => panic!("an entry is a string or plural forms: {v}"),
        };
        let mut out = BTreeSet::new();
        for text in texts {
            for part in text.split('{').skip(1) {
                if let Some((name, _)) = part.split_once('}') {
                    out.insert(name.to_owned());
                }
            }
        }
        out
    }

    #[test]
    fn the_catalogs_have_the_same_keys_and_placeholders() {
        let en = catalog("en");
        for (code, ..) in LANGUAGES {
            let other = catalog(code);
            let missing: Vec<_> = en.keys().filter(|k| !other.contains_key(*k)).collect();
            let extra: Vec<_> = other.keys().filter(|k| !en.contains_key(*k)).collect();
            assert!(missing.is_empty(), "strings/{code}.json lacks {missing:?}");
            assert!(
                extra.is_empty(),
                "strings/{code}.json has keys en.json lacks: {extra:?}"
            );
            for (key, value) in &en {
                assert_eq!(
                    placeholders(value),
                    placeholders(&other[key]),
                    "{key}: strings/{code}.json fills other placeholders than en.json"
                );
                assert_eq!(
                    value.is_object(),
                    other[key].is_object(),
                    "{key}: plural in one catalog, not the other"
                );
            }
        }
    }

    /// Every key the page asks for is in the catalogs: `t('key'...)`, the keys it lists for
    /// later (`'nav.jobs'`), and the page's `data-t` attributes; a dotted word that is no key
    /// (`'charge.paid'` as a placeholder) is named here.
    #[test]
    fn every_key_the_page_uses_is_in_the_catalogs() {
        const NOT_KEYS: [&str; 3] = ["charge.paid", "gancho.portal.session", "gancho.portal.lang"];
        let en = catalog("en");
        let js = include_str!("../portal/app.js");
        let html = include_str!("../portal/index.html");
        let mut used = BTreeSet::new();
        // Every stretch between two quotes: comments' apostrophes only add stretches that
        // are no dotted word.
        for part in js.split('\'').skip(1) {
            let dotted = part.contains('.')
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '_');
            if dotted && !NOT_KEYS.contains(&part) {
                used.insert(part.to_owned());
            }
        }
        for (at, _) in js.match_indices("t('") {
            let before = js[..at].chars().next_back().unwrap_or(' ');
            if !(before.is_ascii_alphanumeric() || "_.".contains(before)) {
                used.insert(js[at + 3..].split('\'').next().unwrap().to_owned());
            }
        }
        for part in html.split("data-t=\"").skip(1) {
            used.insert(part.split('"').next().unwrap().to_owned());
        }
        assert!(
            used.len() > 200,
            "found only {} keys: the scan is broken",
            used.len()
        );
        let missing: Vec<_> = used.iter().filter(|k| !en.contains_key(*k)).collect();
        assert!(
            missing.is_empty(),
            "the page uses keys no catalog has: {missing:?}"
        );
        let unused: Vec<_> = en.keys().filter(|k| !used.contains(*k)).collect();
        assert!(
            unused.is_empty(),
            "catalog keys the page never uses: {unused:?}"
        );
    }

    #[test]
    fn the_language_follows_accept_language_or_the_choice() {
        assert_eq!(
            pick_language(None, Some("pt-BR,pt;q=0.9,en;q=0.8")),
            "pt-BR"
        );
        assert_eq!(pick_language(None, Some("pt")), "pt-BR");
        assert_eq!(pick_language(None, Some("en-US,en;q=0.9")), "en");
        assert_eq!(
            pick_language(None, Some("de-DE, pt;q=0.5, en;q=0.4")),
            "pt-BR"
        );
        assert_eq!(pick_language(None, Some("fr")), "en");
        assert_eq!(pick_language(None, None), "en");
        assert_eq!(pick_language(None, Some("pt;q=0")), "en");
        assert_eq!(pick_language(Some("en"), Some("pt-BR")), "en");
        assert_eq!(pick_language(Some("pt-BR"), Some("en")), "pt-BR");
        assert_eq!(pick_language(Some("xx"), Some("pt-BR")), "pt-BR");
        for (code, body) in catalogs() {
            let v: serde_json::Value = serde_json::from_slice(body).unwrap();
            assert_eq!(v["lang"], *code);
            assert_eq!(v["languages"].as_array().unwrap().len(), LANGUAGES.len());
        }
    }

    #[test]
    fn an_accent_is_a_dark_enough_hex_colour() {
        assert_eq!(check_accent("#0B6E4F").unwrap(), "#0b6e4f");
        assert!(check_accent("0b6e4f").unwrap_err().contains("#rrggbb"));
        assert!(check_accent("#0b6e4").unwrap_err().contains("#rrggbb"));
        assert!(check_accent("red").unwrap_err().contains("#rrggbb"));
        assert!(check_accent("#0b6e4f;}body{")
            .unwrap_err()
            .contains("#rrggbb"));
        let light = check_accent("#ffe066").unwrap_err();
        assert!(light.contains("too light"), "{light}");
    }

    #[test]
    fn a_logo_is_a_png_or_an_svg_with_nothing_that_runs() {
        let png = b"\x89PNG\r\n\x1a\n rest of it";
        assert_eq!(check_logo(png).unwrap(), "image/png");
        let plain = r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 10 10"><defs><linearGradient id="g"/></defs><rect fill="url(#g)" width="10" height="10"/><use href="#g"/></svg>"##;
        assert_eq!(check_logo(plain.as_bytes()).unwrap(), "image/svg+xml");
        for (bad, why) in [
            (r#"<svg><script>alert(1)</script></svg>"#, "a script"),
            (r#"<svg><SCRIPT>alert(1)</SCRIPT></svg>"#, "a script"),
            (r#"<svg onload="alert(1)"></svg>"#, "event handler (onload="),
            (
                r#"<svg><rect  onclick = "x"/></svg>"#,
                "event handler (onclick=",
            ),
            (
                r#"<svg><a href="javascript:alert(1)"><text>x</text></a></svg>"#,
                "javascript:",
            ),
            (
                r#"<svg><image href="https://evil.example/x.png"/></svg>"#,
                "outside itself",
            ),
            (
                r#"<svg><rect style="fill:url(https://evil.example/)"/></svg>"#,
                "outside itself",
            ),
            (
                r#"<svg><foreignObject><div/></foreignObject></svg>"#,
                "foreignObject",
            ),
            (
                r#"<!DOCTYPE svg [<!ENTITY x "y">]><svg>&x;</svg>"#,
                "DOCTYPE",
            ),
            ("plain text", "no <svg>"),
        ] {
            let err = check_logo(bad.as_bytes()).unwrap_err();
            assert!(err.contains(why), "{bad}: {err}");
        }
        let big = vec![b' '; LOGO_MAX + 1];
        assert!(check_logo(&big).unwrap_err().contains("64 KiB"));
    }

    #[test]
    fn the_title_goes_into_the_page_as_text() {
        let brand = Brand::new(Some("Pagamentos <b>&</b> \"Cia\""), None, None).unwrap();
        let page = brand.page();
        assert!(page.contains("<title>Pagamentos &lt;b&gt;&amp;&lt;/b&gt; &quot;Cia&quot;</title>"));
        assert!(!page.contains("{{"));
        assert!(page.contains("src=\"icon.svg\""));
        assert!(Brand::new(Some(&"x".repeat(61)), None, None)
            .unwrap_err()
            .contains("portal_title"));
        assert!(Brand::new(Some("a\nb"), None, None)
            .unwrap_err()
            .contains("portal_title"));
        assert!(!Brand::default().stylesheet().contains("--accent"));
        let accent = Brand::new(None, Some("#0b6e4f"), None).unwrap();
        assert_eq!(accent.stylesheet(), ":root { --accent: #0b6e4f; }\n");
    }
}
