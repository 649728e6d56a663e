//! What a program may call: jaq's core, its standard library and its JSON functions, less
//! what reads the process or the clock, stops a role, writes to its logs or reads input; and
//! of those, only what the program uses (a program compiled with the whole library weighs
//! about 110 KB, with what it uses a few KB: 10,000 endpoints' programs must fit in a role).

use crate::value::V;
use crate::Sandboxed;
use jaq_core::load::parse::Def;
use jaq_core::native::{bome, run, unary, v, Filter, Fun};
use jaq_core::{Error, RunPtr, ValR};
use jaq_json::Val;
use jaq_std::ValT as _;
use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

/// Names a program may not call, with why: each is a compile error.
pub const FORBIDDEN: &[(&str, &str)] = &[
    ("env", "it reads the process environment"),
    ("$ENV", "it reads the process environment"),
    ("halt", "it stops the process"),
    ("halt_error", "it stops the process"),
    ("input", "it reads input other than the event"),
    ("inputs", "it reads input other than the event"),
    ("debug", "it writes to the role's log"),
    ("stderr", "it writes to the role's log"),
    ("debug_empty", "it writes to the role's log"),
    ("stderr_empty", "it writes to the role's log"),
    ("input_filename", "it reads input other than the event"),
    (
        "now",
        "it reads the clock, so each retry's body would differ",
    ),
    ("localtime", "it reads the machine's time zone"),
    ("strflocaltime", "it reads the machine's time zone"),
    ("mktime", "it reads the machine's time zone"),
    ("import", "programs are one file: modules cannot be loaded"),
    ("include", "programs are one file: modules cannot be loaded"),
];

/// Why `name` may not be called, if it may not.
pub fn forbidden(name: &str) -> Option<&'static str> {
    FORBIDDEN
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, why)| *why)
}

/// Every word of `text` that could be a name: letters, digits, `_`, `@`, `$` and `::`.
pub(crate) fn words(text: &str, out: &mut HashSet<String>) {
    let is_word = |c: char| c.is_ascii_alphanumeric() || matches!(c, '_' | '@' | '$' | ':');
    for w in text.split(|c: char| !is_word(c)) {
        if !w.is_empty() && !out.contains(w) {
            out.insert(w.to_owned());
        }
    }
}

struct Library {
    defs: Vec<Def<&'static str>>,
    /// The words of each definition's body, by name.
    uses: HashMap<&'static str, HashSet<String>>,
}

/// The regular expressions' functions, each behind a guard that refuses a pattern longer
/// than [`MAX_PATTERN`] and counts what matching can cost before it runs: the engine is
/// linear in the string times the pattern, without a tick of its own, and a pattern may be
/// built from the event (a 1 MiB pattern over a 256 KiB payload is hours).
const GUARDED_REGEX: &str = r#"
def matches($re; $flags): _regex_guard($re) | _unguarded_matches($re; $flags);
def split_matches($re; $flags): _regex_guard($re) | _unguarded_split_matches($re; $flags);
def split_($re; $flags): _regex_guard($re) | _unguarded_split_($re; $flags);
"#;

/// Longest regular expression a program may match with.
pub const MAX_PATTERN: usize = 1024;

/// The regex natives jaq-std defines, reached only through [`GUARDED_REGEX`].
const REGEX_NATIVES: [&str; 3] = ["matches", "split_matches", "split_"];

static LIBRARY: LazyLock<Library> = LazyLock::new(|| {
    let guarded =
        jaq_core::load::parse(GUARDED_REGEX, |p| p.defs()).expect("the regex guards parse");
    let defs: Vec<Def<&'static str>> = jaq_core::defs()
        .chain(guarded)
        .chain(jaq_std::defs())
        .chain(jaq_json::defs())
        .filter(|d| forbidden(d.name).is_none())
        .collect();
    let mut uses: HashMap<&'static str, HashSet<String>> = HashMap::new();
    for d in &defs {
        words(&format!("{:?}", d.body), uses.entry(d.name).or_default());
    }
    Library { defs, uses }
});

/// The definitions and functions a program whose words are `need` may call.
pub(crate) fn for_program(
    mut need: HashSet<String>,
) -> (Vec<Def<&'static str>>, Vec<Fun<Sandboxed>>) {
    let lib = &*LIBRARY;
    loop {
        let before = need.len();
        let more: Vec<String> = lib
            .uses
            .iter()
            .filter(|(name, _)| need.contains(**name))
            .flat_map(|(_, words)| words.iter().cloned())
            .collect();
        need.extend(more);
        if need.len() == before {
            break;
        }
    }
    let defs = lib
        .defs
        .iter()
        .filter(|d| need.contains(d.name))
        .cloned()
        .collect();
    let funs = jaq_core::funs::<Sandboxed>()
        .chain(jaq_std::funs().map(|(name, args, f)| {
            // Renamed: a program reaches them through their guards.
            let name = match REGEX_NATIVES.iter().position(|n| *n == name) {
                Some(i) => [
                    "_unguarded_matches",
                    "_unguarded_split_matches",
                    "_unguarded_split_",
                ][i],
                None => name,
            };
            (name, args, f)
        }))
        .chain(json_funs())
        .filter(|(name, _, _)| forbidden(name).is_none() && need.contains(*name))
        .collect();
    (defs, funs)
}

/// jaq-json's functions, for our value type.
fn json_funs() -> impl Iterator<Item = Fun<Sandboxed>> {
    let fs: Box<[Filter<RunPtr<Sandboxed>>]> = Box::new([
        ("length", v(0), |cv| bome(length(cv.1))),
        ("tojson", v(0), |cv| bome(Ok(tojson(&cv.1)))),
        ("fromjson", v(0), |cv| bome(fromjson(&cv.1))),
        ("contains", v(1), |cv| {
            unary(cv, |x, y| Ok(V::from(contains(x.inner(), y.inner()))))
        }),
        ("has", v(1), |cv| unary(cv, |x, k| has(&x, &k))),
        ("indices", v(1), |cv| unary(cv, |x, y| indices(&x, &y))),
        ("_regex_guard", v(1), |cv| {
            unary(cv, |x, re| regex_guard(x, &re))
        }),
    ]);
    fs.into_vec()
        .into_iter()
        .map(|(name, args, f): Filter<RunPtr<Sandboxed>>| run::<Sandboxed>((name, args, f)))
}

fn err(message: String) -> Error<V> {
    Error::str(message)
}

fn shown(x: &V) -> String {
    crate::value::capped(x, 100)
}

/// `x` when matching `re` against it may run: `re` at most [`MAX_PATTERN`] bytes, and the
/// cost (string times pattern) counted first.
fn regex_guard(x: V, re: &V) -> ValR<V> {
    let pattern = re.inner().as_bytes().map_or(0, <[u8]>::len);
    if pattern > MAX_PATTERN {
        return Err(err(format!(
            "a regular expression may be at most {MAX_PATTERN} bytes long; this one is {pattern}"
        )));
    }
    let text = x.inner().as_bytes().map_or(0, <[u8]>::len) as u64;
    crate::meter::tick(text.saturating_mul(pattern.max(1) as u64) / 64 + 1);
    Ok(x)
}

fn length(x: V) -> ValR<V> {
    crate::meter::tick(1);
    Ok(match x.inner() {
        Val::Null => V::from(0usize),
        Val::Bool(_) => return Err(err(format!("{} has no length", shown(&x)))),
        Val::Num(_) if x < V::from(0isize) => return -x,
        Val::Num(_) => x,
        Val::TStr(s) => {
            crate::meter::tick(s.len() as u64 / 64);
            V::from(String::from_utf8_lossy(s).chars().count())
        }
        Val::BStr(b) => V::from(b.len()),
        Val::Arr(a) => V::from(a.len()),
        Val::Obj(o) => V::from(o.len()),
    })
}

/// The value written out as JSON (the same text a transform's body would be).
pub(crate) fn tojson(x: &V) -> V {
    crate::meter::tick(x.size() as u64 / 16 + 1);
    let mut out = Vec::new();
    // Writing to memory cannot fail.
    let _ = jaq_json::write::write(&mut out, &Default::default(), 0, x.inner());
    <V as jaq_std::ValT>::from_utf8_bytes(out)
}

fn fromjson(x: &V) -> ValR<V> {
    let Some(text) = x.inner().as_utf8_bytes() else {
        return Err(err(format!("cannot parse {} as JSON", shown(x))));
    };
    crate::meter::tick(text.len() as u64 / 64 + 1);
    if crate::json_depth(text) > crate::MAX_DEPTH {
        return Err(err(format!(
            "cannot parse {} as JSON: it nests deeper than {} levels",
            shown(x),
            crate::MAX_DEPTH
        )));
    }
    match jaq_json::read::parse_single(text) {
        Ok(v) => {
            let v = V::new(v);
            v.size();
            Ok(v)
        }
        Err(e) => Err(err(format!("cannot parse {} as JSON: {e}", shown(x)))),
    }
}

/// Whether `a` contains `b`, as jq says: a substring, every element of an array in some
/// element, every key of an object with a value contained, or else equal.
fn contains(a: &Val, b: &Val) -> bool {
    match (a, b) {
        (Val::TStr(l), Val::TStr(r)) | (Val::BStr(l), Val::BStr(r)) => {
            crate::meter::tick(l.len() as u64 / 64 + 1);
            r.is_empty() || l.windows(r.len()).any(|w| w == &r[..])
        }
        (Val::Arr(l), Val::Arr(r)) => {
            crate::meter::tick((l.len() as u64).saturating_mul(r.len() as u64) + 1);
            r.iter().all(|r| l.iter().any(|l| contains(l, r)))
        }
        (Val::Obj(l), Val::Obj(r)) => {
            crate::meter::tick(r.len() as u64 + 1);
            r.iter()
                .all(|(k, r)| l.get(k).is_some_and(|l| contains(l, r)))
        }
        _ => {
            crate::meter::tick(1);
            a == b
        }
    }
}

fn has(x: &V, k: &V) -> ValR<V> {
    crate::meter::tick(1);
    match (x.inner(), k.inner()) {
        (Val::Obj(o), k) => Ok(V::from(o.contains_key(k))),
        (Val::Arr(a), _) if k.inner().is_int() => {
            let i = k.inner().as_isize().unwrap_or(-1);
            Ok(V::from(i >= 0 && (i as usize) < a.len()))
        }
        _ => Err(err(format!(
            "cannot check whether {} has a key {}",
            shown(x),
            shown(k)
        ))),
    }
}

fn indices(x: &V, y: &V) -> ValR<V> {
    let at = |found: Vec<usize>| V::from_iter(found.into_iter().map(V::from));
    match (x.inner(), y.inner()) {
        (Val::Null, _) | (_, Val::Null) => Ok(V::from(Val::Null)),
        (Val::TStr(s), Val::TStr(t)) => {
            crate::meter::tick((s.len() as u64).saturating_mul(t.len() as u64) / 64 + 1);
            let s = String::from_utf8_lossy(s);
            let t = String::from_utf8_lossy(t);
            if t.is_empty() {
                return Ok(at(Vec::new()));
            }
            let found = s
                .char_indices()
                .enumerate()
                .filter(|(_, (b, _))| s[*b..].starts_with(&*t))
                .map(|(i, _)| i)
                .collect();
            Ok(at(found))
        }
        (Val::Arr(a), Val::Arr(b)) => {
            crate::meter::tick((a.len() as u64).saturating_mul(b.len() as u64) + 1);
            if b.is_empty() {
                return Ok(at(Vec::new()));
            }
            let found = a
                .windows(b.len())
                .enumerate()
                .filter(|(_, w)| *w == &b[..])
                .map(|(i, _)| i)
                .collect();
            Ok(at(found))
        }
        (Val::Arr(a), e) => {
            crate::meter::tick(a.len() as u64 + 1);
            let found = a
                .iter()
                .enumerate()
                .filter(|(_, x)| *x == e)
                .map(|(i, _)| i)
                .collect();
            Ok(at(found))
        }
        _ => Err(err(format!(
            "cannot find the indices of {} in {}",
            shown(y),
            shown(x)
        ))),
    }
}

impl From<Val> for V {
    fn from(v: Val) -> Self {
        V::new(v)
    }
}
