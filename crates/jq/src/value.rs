//! The value programs run on: jaq's JSON value ([`jaq_json::Val`]), metered. Every operation
//! ticks the run's meter ([`crate::meter`]), and no value may grow past [`MAX_SIZE`] (its
//! strings' bytes plus one per node, counted as if nothing were shared) or nest deeper than
//! [`MAX_DEPTH`]: what could build one is checked before it allocates (`"a" * 1e9`, a string
//! doubled thirty times), and a container built from parts adds up their sizes. So a value
//! a program holds can be compared, hashed or written out in time and memory bounded by that
//! size, whatever it shares (`[., .]` thirty times is 2^30 nodes written out, not 30), and
//! dropped without recursing deeper than the bound.

use crate::meter::{cut, tick, Cutoff};
use jaq_core::box_iter::BoxIter;
use jaq_core::path::Opt;
use jaq_core::val::Range;
use jaq_core::{Error, Exn, ValR, ValX};
use jaq_json::Val;
use jaq_std::ValT as _;
use std::cell::{Cell, RefCell};
use std::cmp::Ordering;
use std::fmt;

/// Largest value a program may hold: bytes of its strings plus one per node.
pub const MAX_SIZE: usize = 1 << 20;
/// Deepest nesting a value may have.
pub const MAX_DEPTH: usize = 512;

/// Size and depth of a value, once measured.
#[derive(Clone, Copy, Debug)]
struct Extent {
    size: usize,
    depth: usize,
}

impl Extent {
    const LEAF: Self = Self { size: 1, depth: 0 };

    fn check(self) -> Self {
        if self.size > MAX_SIZE || self.depth > MAX_DEPTH {
            cut(Cutoff::Size);
        }
        self
    }
}

/// A JSON value with its extent, measured when first needed.
#[derive(Debug, Default)]
pub struct V {
    v: Val,
    extent: Cell<Option<Extent>>,
}

impl V {
    pub(crate) fn new(v: Val) -> Self {
        Self {
            v,
            extent: Cell::new(None),
        }
    }

    fn known(v: Val, extent: Extent) -> Self {
        Self {
            v,
            extent: Cell::new(Some(extent.check())),
        }
    }

    pub(crate) fn inner(&self) -> &Val {
        &self.v
    }

    fn extent(&self) -> Extent {
        if let Some(e) = self.extent.get() {
            return e;
        }
        let mut nodes = 0;
        let e = measure(&self.v, 0, &mut nodes);
        tick(nodes / 16 + 1);
        let e = e.check();
        self.extent.set(Some(e));
        e
    }

    /// The size a program's value counts for (at most [`MAX_SIZE`]).
    pub(crate) fn size(&self) -> usize {
        self.extent().size
    }

    fn str_len(&self) -> Option<usize> {
        match &self.v {
            Val::TStr(b) | Val::BStr(b) => Some(b.len()),
            _ => None,
        }
    }

    fn is_container(&self) -> bool {
        matches!(self.v, Val::Arr(_) | Val::Obj(_))
    }
}

/// The extent of `v`, measured no further than just past the bounds (so a measure costs at
/// most about [`MAX_SIZE`] nodes and recurses at most [`MAX_DEPTH`] + 1 deep).
fn measure(v: &Val, depth: usize, nodes: &mut u64) -> Extent {
    *nodes += 1;
    let over = || Extent {
        size: MAX_SIZE + 1,
        depth,
    };
    match v {
        Val::TStr(b) | Val::BStr(b) => Extent {
            size: 1 + b.len(),
            depth,
        },
        Val::Arr(_) | Val::Obj(_) if depth > MAX_DEPTH => Extent {
            size: 1,
            depth: MAX_DEPTH + 1,
        },
        Val::Arr(a) => {
            let mut e = Extent { size: 1, depth };
            for x in a.iter() {
                let x = measure(x, depth + 1, nodes);
                e.size += x.size;
                e.depth = e.depth.max(x.depth);
                if e.size > MAX_SIZE || e.depth > MAX_DEPTH {
                    return Extent {
                        depth: e.depth,
                        ..over()
                    };
                }
            }
            e
        }
        Val::Obj(o) => {
            let mut e = Extent { size: 1, depth };
            for (k, x) in o.iter() {
                let k = measure(k, depth + 1, nodes);
                let x = measure(x, depth + 1, nodes);
                e.size += k.size + x.size;
                e.depth = e.depth.max(k.depth).max(x.depth);
                if e.size > MAX_SIZE || e.depth > MAX_DEPTH {
                    return Extent {
                        depth: e.depth,
                        ..over()
                    };
                }
            }
            e
        }
        _ => Extent { size: 1, depth },
    }
}

/// The extent of a container of `parts` (its depth counted from the parts', which are at
/// depth 0 of their own).
fn container<'x>(parts: impl IntoIterator<Item = &'x V>) -> Extent {
    let mut e = Extent { size: 1, depth: 1 };
    for p in parts {
        let x = p.extent();
        e.size += x.size;
        e.depth = e.depth.max(x.depth + 1);
        if e.size > MAX_SIZE || e.depth > MAX_DEPTH {
            cut(Cutoff::Size);
        }
    }
    e
}

/// An error of the inner value as an error of ours: its message, at most 1 KiB of it.
fn lift_err(e: Error<Val>) -> Error<V> {
    Error::str(capped(&e, 1024))
}

fn lift_valr(r: ValR<Val>) -> ValR<V> {
    r.map(V::new).map_err(lift_err)
}

/// `x` written out, cut at `max` bytes.
pub(crate) fn capped(x: &dyn fmt::Display, max: usize) -> String {
    struct Capped(String, usize);
    impl fmt::Write for Capped {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            if self.0.len() + s.len() > self.1 {
                let mut end = self.1 - self.0.len();
                while !s.is_char_boundary(end) {
                    end -= 1;
                }
                self.0.push_str(&s[..end]);
                return Err(fmt::Error);
            }
            self.0.push_str(s);
            Ok(())
        }
    }
    let mut out = Capped(String::new(), max);
    if fmt::write(&mut out, format_args!("{x}")).is_err() {
        out.0.push('…');
    }
    out.0
}

/// Runs an update of the inner value with `f`, a function of ours: what `f` yields goes in
/// as the inner value, and an exception of `f`'s (which may be one of jaq's control flow:
/// a `break`, a tail call) is kept aside and given back as it was.
fn update<'a, I>(
    f: impl Fn(V) -> I,
    run: impl FnOnce(&dyn Fn(Val) -> BoxIter<'a, ValX<'a, Val>>) -> ValX<'a, Val>,
) -> ValX<'a, V>
where
    I: Iterator<Item = ValX<'a, V>>,
{
    let aside: RefCell<Option<Exn<'a, V>>> = RefCell::new(None);
    let g = |x: Val| -> BoxIter<'a, ValX<'a, Val>> {
        let ys: Vec<ValX<'a, Val>> = f(V::new(x))
            .map(|y| match y {
                Ok(y) => Ok(y.v),
                Err(e) => {
                    aside.borrow_mut().get_or_insert(e);
                    Err(Exn::from(Error::new(Val::Null)))
                }
            })
            .collect();
        Box::new(ys.into_iter())
    };
    match run(&g) {
        Ok(v) => {
            let v = V::new(v);
            v.extent();
            Ok(v)
        }
        Err(e) => Err(match aside.into_inner() {
            Some(e) => e,
            None => match e.get_err() {
                Ok(e) => Exn::from(lift_err(e)),
                Err(_) => Exn::from(Error::str("the update failed")),
            },
        }),
    }
}

impl jaq_core::ValT for V {
    fn from_num(n: &str) -> ValR<Self> {
        tick(1);
        lift_valr(Val::from_num(n))
    }

    fn from_map<I: IntoIterator<Item = (Self, Self)>>(iter: I) -> ValR<Self> {
        let pairs: Vec<(Self, Self)> = iter.into_iter().collect();
        tick(pairs.len() as u64 + 1);
        let e = container(pairs.iter().flat_map(|(k, v)| [k, v]));
        let inner = Val::from_map(pairs.into_iter().map(|(k, v)| (k.v, v.v)));
        inner.map(|v| V::known(v, e)).map_err(lift_err)
    }

    fn key_values(self) -> BoxIter<'static, ValR<(Self, Self), Self>> {
        tick(1);
        Box::new(self.v.key_values().map(|r| {
            tick(1);
            r.map(|(k, v)| (V::new(k), V::new(v))).map_err(lift_err)
        }))
    }

    fn values(self) -> Box<dyn Iterator<Item = ValR<Self>>> {
        tick(1);
        Box::new(self.v.values().map(|r| {
            tick(1);
            lift_valr(r)
        }))
    }

    fn index(self, index: &Self) -> ValR<Self> {
        tick(1);
        lift_valr(self.v.index(&index.v))
    }

    fn range(self, range: Range<&Self>) -> ValR<Self> {
        tick(1);
        let range = range.start.map(|s| &s.v)..range.end.map(|e| &e.v);
        lift_valr(self.v.range(range))
    }

    fn map_values<'a, I: Iterator<Item = ValX<'a, Self>>>(
        self,
        opt: Opt,
        f: impl Fn(Self) -> I,
    ) -> ValX<'a, Self> {
        tick(1);
        let v = self.v;
        update(f, move |g| v.map_values(opt, g))
    }

    fn map_index<'a, I: Iterator<Item = ValX<'a, Self>>>(
        self,
        index: &Self,
        opt: Opt,
        f: impl Fn(Self) -> I,
    ) -> ValX<'a, Self> {
        tick(1);
        let v = self.v;
        update(f, move |g| v.map_index(&index.v, opt, g))
    }

    fn map_range<'a, I: Iterator<Item = ValX<'a, Self>>>(
        self,
        range: Range<&Self>,
        opt: Opt,
        f: impl Fn(Self) -> I,
    ) -> ValX<'a, Self> {
        tick(1);
        let v = self.v;
        let range = range.start.map(|s| &s.v)..range.end.map(|e| &e.v);
        update(f, move |g| v.map_range(range, opt, g))
    }

    fn as_bool(&self) -> bool {
        self.v.as_bool()
    }

    fn into_string(self) -> Self {
        tick(1);
        if self.str_len().is_none() {
            // Written out, a value is at most a few times its size.
            tick(self.size() as u64 / 16);
        }
        V::new(self.v.into_string()).remeasured()
    }
}

impl V {
    /// Forgets a guessed extent and measures again.
    fn remeasured(self) -> Self {
        self.extent.set(None);
        self.extent();
        self
    }
}

impl jaq_std::ValT for V {
    fn into_seq<S: FromIterator<Self>>(self) -> Result<S, Self> {
        tick(1);
        match self.v {
            Val::Arr(a) => {
                tick(a.len() as u64);
                Ok(a.iter().cloned().map(V::new).collect())
            }
            v => Err(V::new(v)),
        }
    }

    fn is_int(&self) -> bool {
        self.v.is_int()
    }

    fn as_isize(&self) -> Option<isize> {
        self.v.as_isize()
    }

    fn as_f64(&self) -> Option<f64> {
        self.v.as_f64()
    }

    fn is_utf8_str(&self) -> bool {
        self.v.is_utf8_str()
    }

    /// Every function that reads a string's bytes (`startswith`, `ltrimstr`, `ascii_downcase`,
    /// `@base64`, ...) pays for its length here: those run without a tick of their own.
    fn as_bytes(&self) -> Option<&[u8]> {
        let bytes = self.v.as_bytes();
        tick(bytes.map_or(0, <[u8]>::len) as u64 / 64 + 1);
        bytes
    }

    fn as_sub_str(&self, sub: &[u8]) -> Self {
        tick(1);
        V::new(self.v.as_sub_str(sub))
    }

    fn from_utf8_bytes(b: impl AsRef<[u8]> + Send + 'static) -> Self {
        let len = b.as_ref().len();
        tick(len as u64 / 64 + 1);
        if len > MAX_SIZE {
            cut(Cutoff::Size);
        }
        V::known(
            Val::from_utf8_bytes(b),
            Extent {
                size: 1 + len,
                depth: 0,
            },
        )
    }
}

impl fmt::Display for V {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.v.fmt(f)
    }
}

impl From<bool> for V {
    fn from(b: bool) -> Self {
        V::known(Val::from(b), Extent::LEAF)
    }
}

impl From<isize> for V {
    fn from(i: isize) -> Self {
        V::known(Val::from(i), Extent::LEAF)
    }
}

impl From<usize> for V {
    fn from(i: usize) -> Self {
        V::known(Val::from(i), Extent::LEAF)
    }
}

impl From<f64> for V {
    fn from(x: f64) -> Self {
        V::known(Val::from(x), Extent::LEAF)
    }
}

impl From<String> for V {
    fn from(s: String) -> Self {
        let size = 1 + s.len();
        V::known(Val::from(s), Extent { size, depth: 0 })
    }
}

impl From<Range<V>> for V {
    fn from(r: Range<V>) -> Self {
        tick(1);
        V::new(Val::from(r.start.map(|s| s.v)..r.end.map(|e| e.v))).remeasured()
    }
}

impl FromIterator<V> for V {
    fn from_iter<T: IntoIterator<Item = V>>(iter: T) -> Self {
        let items: Vec<V> = iter.into_iter().collect();
        tick(items.len() as u64 + 1);
        let e = container(&items);
        V::known(items.into_iter().map(|x| x.v).collect(), e)
    }
}

/// A copy is an operation too: loops and recursion copy their input at every step.
impl Clone for V {
    fn clone(&self) -> Self {
        tick(1);
        Self {
            v: self.v.clone(),
            extent: self.extent.clone(),
        }
    }
}

impl PartialEq for V {
    fn eq(&self, other: &Self) -> bool {
        compare_cost(self, other);
        self.v == other.v
    }
}

impl Eq for V {}

impl PartialOrd for V {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for V {
    fn cmp(&self, other: &Self) -> Ordering {
        compare_cost(self, other);
        self.v.cmp(&other.v)
    }
}

/// A comparison walks at most the smaller of the two values.
fn compare_cost(a: &V, b: &V) {
    tick(1);
    if a.is_container() && b.is_container() {
        tick(a.size().min(b.size()) as u64 / 16);
    } else if let (Some(x), Some(y)) = (a.str_len(), b.str_len()) {
        tick(x.min(y) as u64 / 64);
    }
}

/// The most `a` and `b` together can weigh, checked before it is built: a cutoff past
/// [`MAX_SIZE`]; `None` when neither is a string or a container.
fn together(a: &V, b: &V) -> Option<Extent> {
    if a.str_len().is_none() && !a.is_container() {
        return None;
    }
    let (x, y) = (a.extent(), b.extent());
    let e = Extent {
        size: x.size.saturating_add(y.size),
        depth: x.depth.max(y.depth),
    };
    tick(e.size as u64 / 64);
    Some(e.check())
}

/// A result whose extent is known (`bound`, exact but for objects, whose keys may
/// overlap) or measured.
fn made(v: Val, bound: Option<Extent>) -> V {
    match bound {
        Some(e) if !matches!(v, Val::Obj(_)) => V::known(v, e),
        _ => V::new(v).remeasured(),
    }
}

impl std::ops::Add for V {
    type Output = ValR<V>;
    fn add(self, rhs: Self) -> ValR<V> {
        tick(1);
        let bound = together(&self, &rhs);
        lift_valr(self.v + rhs.v).map(|v| made(v.v, bound))
    }
}

impl std::ops::Sub for V {
    type Output = ValR<V>;
    fn sub(self, rhs: Self) -> ValR<V> {
        tick(1);
        if let (Val::Arr(a), Val::Arr(b)) = (&self.v, &rhs.v) {
            // Each element against each one taken away.
            tick((a.len() as u64).saturating_mul(b.len() as u64));
        }
        lift_valr(self.v - rhs.v)
    }
}

/// A string repeated: its length times the count, checked before a byte is written.
fn repeated(s: &V, n: &V) -> Extent {
    let times =
        n.v.as_f64()
            .map_or(0.0, |f| f.clamp(0.0, MAX_SIZE as f64 + 1.0));
    let size = (s.str_len().unwrap_or(0) as f64 * times) as usize + 1;
    tick(size as u64 / 64);
    Extent { size, depth: 0 }.check()
}

impl std::ops::Mul for V {
    type Output = ValR<V>;
    fn mul(self, rhs: Self) -> ValR<V> {
        tick(1);
        let bound = match (self.str_len(), rhs.str_len()) {
            (Some(_), None) => Some(repeated(&self, &rhs)),
            (None, Some(_)) => Some(repeated(&rhs, &self)),
            _ if self.is_container() => together(&self, &rhs),
            _ => None,
        };
        lift_valr(self.v * rhs.v).map(|v| made(v.v, bound))
    }
}

impl std::ops::Div for V {
    type Output = ValR<V>;
    fn div(self, rhs: Self) -> ValR<V> {
        tick(1 + self.str_len().unwrap_or(0) as u64 / 64);
        lift_valr(self.v / rhs.v).map(V::remeasured)
    }
}

impl std::ops::Rem for V {
    type Output = ValR<V>;
    fn rem(self, rhs: Self) -> ValR<V> {
        tick(1);
        lift_valr(self.v % rhs.v)
    }
}

impl std::ops::Neg for V {
    type Output = ValR<V>;
    fn neg(self) -> ValR<V> {
        tick(1);
        lift_valr(-self.v)
    }
}
