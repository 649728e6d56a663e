//! Endpoint filters and transforms, written in jq and run with jaq.
//!
//! A program reads the envelope the receiver would get plus the event's id and channels
//! (`{"type", "timestamp", "data", "channels", "id"}`, [`Input`]). It is compiled once when
//! written (a [`CompileError`] names what is wrong and where) and kept by the hash of its text
//! ([`Programs`]), never compiled per event.
//!
//! **Sandboxed**: a program can call jaq's core, the standard library's pure functions and
//! the JSON functions; what reads the environment or the clock, stops the process, writes to
//! the log or reads other input is a compile error ([`prelude::FORBIDDEN`]).
//!
//! **Bounded** from inside ([`meter`], [`value`]): every run has an operation budget (a
//! filter's is shared by all of a tenant's filters for one event), a stack floor and a
//! largest value, and is cut off past any of them; the role goes on.

mod meter;
pub mod prelude;
mod value;

use jaq_core::load::{Arena, File, Loader};
use jaq_core::{Compiler, Ctx, DataT, Vars};
use jaq_json::Val;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};

pub use meter::Cutoff;
pub use value::{MAX_DEPTH, MAX_SIZE};

/// Longest program text.
pub const MAX_PROGRAM: usize = 4096;
/// Deepest nesting of brackets, parentheses and braces in a program's text.
pub const MAX_NESTING: usize = 64;
/// Largest body a transform may produce.
pub const MAX_OUTPUT: usize = 256 << 10;
/// Operations all of a tenant's filters may spend on one event.
pub const FILTER_BUDGET: u64 = 200_000;
/// Operations a transform may spend on one delivery.
pub const TRANSFORM_BUDGET: u64 = 1_000_000;

/// The data programs run with: jaq's tables, and a copy of them (made at every call of a
/// definition) ticks the meter, so a loop or a recursion without a value operation is
/// counted too.
pub struct Sandboxed;

impl DataT for Sandboxed {
    type V<'a> = value::V;
    type Data<'a> = Metered<'a>;
}

/// See [`Sandboxed`].
pub struct Metered<'a>(&'a jaq_core::Lut<Sandboxed>);

impl Clone for Metered<'_> {
    fn clone(&self) -> Self {
        meter::tick(1);
        Self(self.0)
    }
}

impl<'a> jaq_core::data::HasLut<'a, Sandboxed> for Metered<'a> {
    fn lut(&self) -> &'a jaq_core::Lut<Sandboxed> {
        self.0
    }
}

/// Why a program does not compile.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct CompileError {
    /// What is wrong, with where (line and column) when known.
    pub message: String,
}

/// A compiled program.
pub struct Program {
    filter: jaq_core::Filter<Sandboxed>,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Program")
    }
}

/// Line and column (from 1) of `part`, a slice of `code`.
fn position(code: &str, part: &str) -> String {
    let start = jaq_core::load::span(code, part).start.min(code.len());
    let before = &code[..start];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line}, column {column}")
}

/// The deepest nesting of `([{` in `code` outside its strings (an interpolation `\(...)`
/// counts as code).
fn nesting(code: &str) -> usize {
    // Each entry: true for a bracket, false for a string.
    let mut stack: Vec<bool> = Vec::new();
    let mut deepest = 0;
    let mut chars = code.chars();
    while let Some(c) = chars.next() {
        let in_string = stack.last() == Some(&false);
        if in_string {
            match c {
                '\\' => match chars.next() {
                    Some('(') => stack.push(true),
                    _ => continue,
                },
                '"' => {
                    stack.pop();
                }
                _ => {}
            }
        } else {
            match c {
                '"' => stack.push(false),
                '(' | '[' | '{' => stack.push(true),
                ')' | ']' | '}' => {
                    stack.pop();
                }
                '#' => {
                    // A comment runs to the end of its line.
                    for c in chars.by_ref() {
                        if c == '\n' {
                            break;
                        }
                    }
                }
                _ => {}
            }
        }
        deepest = deepest.max(stack.iter().filter(|b| **b).count());
    }
    deepest
}

/// The deepest nesting of the `open` brackets (closed by `close`) in `text`, outside its double-quoted strings
/// (with `\` escapes): a term's rendering (`([{`: how deep compiling and running it recurse)
/// or JSON (`[{`: how deep parsing it recurses).
fn depth(text: &[u8], open: &[u8], close: &[u8]) -> usize {
    let (mut depth, mut deepest, mut quoted, mut escaped) = (0usize, 0, false, false);
    for &b in text {
        if quoted {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => quoted = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => quoted = true,
            b if close.contains(&b) => depth = depth.saturating_sub(1),
            b if open.contains(&b) => {
                depth += 1;
                deepest = deepest.max(depth);
            }
            _ => {}
        }
    }
    deepest
}

fn term_depth(rendered: &str) -> usize {
    depth(rendered.as_bytes(), b"([{", b")]}")
}

/// Deepest nesting of a parsed program's rendering (about six per level of the program).
const MAX_TERM_DEPTH: usize = 6 * MAX_NESTING;
/// Stack compiling a program may take: the parser recurses once per level.
const COMPILE_STACK: usize = 64 << 20;

impl Program {
    /// Compiles `code`.
    pub fn compile(code: &str) -> Result<Program, CompileError> {
        let fail = |message: String| Err(CompileError { message });
        if code.trim().is_empty() {
            return fail("the program is empty".into());
        }
        if code.len() > MAX_PROGRAM {
            return fail(format!(
                "the program is {} bytes long; at most {MAX_PROGRAM} are allowed",
                code.len()
            ));
        }
        if nesting(code) > MAX_NESTING {
            return fail(format!(
                "the program nests brackets, parentheses or braces deeper than {MAX_NESTING} levels"
            ));
        }
        // Parsing recurses once per level of the program: on a stack of its own.
        stacker::grow(COMPILE_STACK, || Self::compile_here(code))
    }

    fn compile_here(code: &str) -> Result<Program, CompileError> {
        let fail = |message: String| Err(CompileError { message });
        let term = jaq_core::load::parse(code, |p| p.term());
        let rendered = format!("{term:?}");
        if term_depth(&rendered) > MAX_TERM_DEPTH {
            return fail(format!(
                "the program nests deeper than {MAX_NESTING} levels"
            ));
        }
        for (name, why) in prelude::FORBIDDEN {
            // (`import` and `include` are refused by the loader, below.)
            let called = if name.starts_with('$') {
                rendered.contains(&format!("Var(\"{name}\")"))
            } else {
                rendered.contains(&format!("Call(\"{name}\""))
            };
            if called {
                return fail(format!("`{name}` is not available to programs: {why}"));
            }
        }
        if rendered.contains("Call(\"_unguarded_") {
            return fail("functions whose names start with _unguarded_ are gancho's own".into());
        }
        let mut need = HashSet::new();
        prelude::words(&rendered, &mut need);
        let (defs, funs) = prelude::for_program(need);
        let arena = Arena::default();
        let modules = match Loader::new(defs).load(&arena, File { code, path: () }) {
            Ok(m) => m,
            Err(errors) => {
                let mut messages = Vec::new();
                for (_, e) in errors {
                    messages.extend(load_messages(code, e));
                }
                return fail(messages.join("; "));
            }
        };
        match Compiler::default().with_funs(funs).compile(modules) {
            Ok(filter) => Ok(Program { filter }),
            Err(errors) => {
                let messages: Vec<String> = errors
                    .into_iter()
                    .flat_map(|(_, es)| es)
                    .map(|(name, undefined)| {
                        let why = prelude::forbidden(name)
                            .map(|why| format!(": not available to programs, {why}"))
                            .unwrap_or_default();
                        format!(
                            "undefined {} `{name}` at {}{why}",
                            undefined.as_str(),
                            position(code, name)
                        )
                    })
                    .collect();
                fail(messages.join("; "))
            }
        }
    }
}

/// What the loader said, one line per error.
fn load_messages(code: &str, e: jaq_core::load::Error<&str>) -> Vec<String> {
    use jaq_core::load::{lex, Error};
    match e {
        Error::Io(files) => files
            .into_iter()
            .map(|(path, _)| {
                format!("cannot load the module `{path}`: programs are one file (import and include are not available)")
            })
            .collect(),
        Error::Lex(errors) => errors
            .into_iter()
            .map(|(expect, found)| {
                let what = match expect {
                    lex::Expect::Delim(d) if !matches!(d, "(" | "[" | "{" | "\"") => {
                        "closing delimiter"
                    }
                    other => other.as_str(),
                };
                format!("expected {what} at {}", position(code, found))
            })
            .collect(),
        Error::Parse(errors) => errors
            .into_iter()
            .map(|(expect, found)| match found.is_empty() {
                true => format!("expected {} at the end of the program", expect.as_str()),
                false => format!(
                    "expected {} at {}, found `{}`",
                    expect.as_str(),
                    position(code, found),
                    found.chars().take(20).collect::<String>()
                ),
            })
            .collect(),
    }
}

/// The deepest nesting of arrays and objects in JSON `text`: the parser recurses once per
/// level, so deeper text is refused before it is parsed (a string of a million `[` built by a
/// program would end the process).
pub(crate) fn json_depth(text: &[u8]) -> usize {
    depth(text, b"[{", b"]}")
}

/// What a program reads: the envelope the receiver would get, plus the event's id and
/// channels.
pub struct Input {
    value: value::V,
}

impl Input {
    /// `data` is the event's payload, a JSON document.
    pub fn new(
        id: &str,
        event_type: &str,
        timestamp: &str,
        data: &[u8],
        channels: &[String],
    ) -> Result<Input, String> {
        if json_depth(data) > MAX_DEPTH {
            return Err(format!(
                "the event's payload nests deeper than {MAX_DEPTH} levels"
            ));
        }
        let data = jaq_json::read::parse_single(data)
            .map_err(|e| format!("the event's payload is not JSON: {e}"))?;
        let text = |s: &str| Val::utf8_str(s.as_bytes().to_vec());
        let channels: Val = channels.iter().map(|c| text(c)).collect();
        let envelope = <Val as jaq_core::ValT>::from_map([
            (text("type"), text(event_type)),
            (text("timestamp"), text(timestamp)),
            (text("data"), data),
            (text("channels"), channels),
            (text("id"), text(id)),
        ])
        .map_err(|e| e.to_string())?;
        let value = value::V::new(envelope);
        let mut budget = u64::MAX;
        match meter::metered(&mut budget, || value.size()) {
            Ok(_) => Ok(Input { value }),
            Err(_) => Err(format!(
                "the event is larger than a program may read ({} bytes at most)",
                MAX_SIZE
            )),
        }
    }
}

/// Why a run gave no answer.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    /// The program raised an error (its message).
    #[error("{0}")]
    Failed(String),
    /// The program produced nothing.
    #[error("the program produced no output")]
    Empty,
    /// The run was cut off.
    #[error("{0}")]
    Cutoff(Cutoff),
    /// A transform's output cannot be a webhook's body.
    #[error("{0}")]
    Output(String),
    /// The engine failed (a fault of jaq's, not the program's).
    #[error("the jq engine failed: {0}")]
    Engine(String),
}

impl RunError {
    /// The `reason` label of `gancho_filter_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Failed(_) => "error",
            Self::Empty => "empty",
            Self::Cutoff(c) => c.as_str(),
            Self::Output(_) => "output",
            Self::Engine(_) => "engine",
        }
    }
}

/// Operations left to spend.
#[derive(Clone, Copy, Debug)]
pub struct Budget(u64);

impl Budget {
    /// A filter's budget for one event (shared by all of a tenant's filters).
    pub fn filters() -> Self {
        Self(FILTER_BUDGET)
    }

    /// A transform's budget for one delivery.
    pub fn transform() -> Self {
        Self(TRANSFORM_BUDGET)
    }

    /// Whether anything is left.
    pub fn spent(&self) -> bool {
        self.0 == 0
    }

    /// Operations left.
    pub fn left(&self) -> u64 {
        self.0
    }
}

impl Program {
    /// The program's first output, or why there is none.
    fn first(&self, input: &Input, budget: &mut Budget) -> Result<value::V, RunError> {
        let ran = meter::metered(&mut budget.0, || {
            let ctx = Ctx::<Sandboxed>::new(Metered(&self.filter.lut), Vars::new([]));
            let first = self.filter.id.run((ctx, input.value.clone())).next();
            match first.map(jaq_core::unwrap_valr) {
                None => Err(RunError::Empty),
                Some(Ok(v)) => Ok(v),
                Some(Err(e)) => Err(RunError::Failed(error_message(e))),
            }
        });
        match ran {
            Ok(result) => result,
            Err(meter::Failure::Cutoff(c)) => Err(RunError::Cutoff(c)),
            Err(meter::Failure::Engine(e)) => Err(RunError::Engine(e)),
        }
    }

    /// A filter: whether the program's first output is `true`.
    pub fn matches(&self, input: &Input, budget: &mut Budget) -> Result<bool, RunError> {
        let first = self.first(input, budget)?;
        Ok(matches!(first.inner(), Val::Bool(true)))
    }

    /// A transform: the program's first output, as the JSON body of the webhook.
    pub fn transform(&self, input: &Input, budget: &mut Budget) -> Result<Vec<u8>, RunError> {
        let first = self.first(input, budget)?;
        let mut body = Vec::new();
        let written = meter::metered(&mut budget.0, || {
            let _ = jaq_json::write::write(&mut body, &Default::default(), 0, first.inner());
        });
        if let Err(meter::Failure::Cutoff(c)) = written {
            return Err(RunError::Cutoff(c));
        }
        if body.len() > MAX_OUTPUT {
            return Err(RunError::Output(format!(
                "the transform's output is {} bytes; a body may be at most {MAX_OUTPUT}",
                body.len()
            )));
        }
        if let Err(e) = serde_json::from_slice::<&serde_json::value::RawValue>(&body) {
            return Err(RunError::Output(format!(
                "the transform's output is not JSON ({e}): {}",
                String::from_utf8_lossy(&body[..body.len().min(100)])
            )));
        }
        Ok(body)
    }
}

/// An error's message: a string error as it is, any other value as JSON (at most 1 KiB).
fn error_message(e: jaq_core::Error<value::V>) -> String {
    let v = e.into_val();
    match v.inner() {
        Val::TStr(s) => {
            let s = String::from_utf8_lossy(s);
            value::capped(&s, 1024)
        }
        _ => value::capped(&v, 1024),
    }
}

/// Compiled programs by the hash of their text, shared by every endpoint that has the same
/// text and kept only while one does: an entry whose program is no longer held is compiled
/// again when asked for.
#[derive(Default)]
pub struct Programs(Mutex<HashMap<[u8; 32], Weak<Program>>>);

impl Programs {
    /// The compiled program of `code`.
    pub fn get(&self, code: &str) -> Result<Arc<Program>, CompileError> {
        let key: [u8; 32] = Sha256::digest(code.as_bytes()).into();
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(program) = map.get(&key).and_then(Weak::upgrade) {
            return Ok(program);
        }
        let program = Arc::new(Program::compile(code)?);
        if map.len() >= 1024 && map.len().is_power_of_two() {
            map.retain(|_, p| p.strong_count() > 0);
        }
        map.insert(key, Arc::downgrade(&program));
        Ok(program)
    }

    /// Programs held now.
    pub fn len(&self) -> usize {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.values().filter(|p| p.strong_count() > 0).count()
    }

    /// Whether none is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The process's programs: every endpoint with the same text shares one compiled program.
pub fn shared() -> &'static Programs {
    static SHARED: std::sync::LazyLock<Programs> = std::sync::LazyLock::new(Programs::default);
    &SHARED
}

#[cfg(test)]
mod tests;
