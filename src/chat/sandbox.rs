//! Rendering a chat template under limits. The template is code from the model file, an
//! untrusted input: a loop can run for ever, a string can double itself 40 times, a macro can
//! recurse, a namespace can be made to hold itself. minijinja bounds instructions (fuel) and
//! recursion; everything else is bounded here by rewriting the compiled bytecode so that every
//! operation that can make a large value goes through a checked function first:
//! - `~`, `+`, `*` are computed only when the result fits `max_bytes`;
//! - every value a call, filter or literal list/map makes is measured (size, nesting depth) and
//!   refused past `max_bytes` or `MAX_DEPTH`, so no later traversal can be deep or cyclic;
//! - namespaces are this module's own (`Namespace`), and a value stored into one may not
//!   contain one: that is the only way a template could make a cycle;
//! - filters and methods whose output can exceed their inputs many times (`join`, `replace`,
//!   `indent`, `format`, `tojson`, `pprint`) are sized before they run;
//! - all output, literal text included, counts against `max_bytes`;
//! - comparisons and membership, which walk their operands, and every check above look at a
//!   wall-clock deadline.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};

use minijinja::machinery::{self, CompiledTemplate, Instruction, Instructions, TemplateConfig};
use minijinja::value::{Enumerator, Object, ObjectRepr, Rest, ValueOrKwargs};
use minijinja::{AutoEscape, Environment, Error, ErrorKind, Output, State, Value};

/// Instructions a render may execute (real chat templates use a few thousand).
const FUEL: u64 = 2_000_000;
/// minijinja's recursion budget; a macro call costs 4 of it.
const RECURSION: usize = 128;
/// Deepest nesting of lists and maps a value may have.
const MAX_DEPTH: usize = 32;
/// Wall-clock time a render may take.
const TIME_MS: f64 = 500.0;

/// Filters sized before they run, under the names the rewritten bytecode calls them by (names
/// a template cannot define itself, as they are not identifiers).
const SIZED_FILTERS: &[(&str, &str)] =
    &[("join", "ferrolm.join"), ("replace", "ferrolm.replace"), ("indent", "ferrolm.indent"), ("format", "ferrolm.format"), ("tojson", "ferrolm.tojson"), ("pprint", "ferrolm.pprint")];
const CHECK: &str = "ferrolm.check";
const SET_ATTR: &str = "ferrolm.set_attr";
const CONCAT: &str = "ferrolm.concat";
const ADD: &str = "ferrolm.add";
const MUL: &str = "ferrolm.mul";
const IN: &str = "ferrolm.in";
type Comparison = fn(&Value, &Value) -> bool;
const COMPARISONS: [(&str, Comparison); 6] =
    [("ferrolm.eq", |a, b| a == b), ("ferrolm.ne", |a, b| a != b), ("ferrolm.lt", |a, b| a < b), ("ferrolm.lte", |a, b| a <= b), ("ferrolm.gt", |a, b| a > b), ("ferrolm.gte", |a, b| a >= b)];

/// The limit a render ran into; the message names it and blames the template.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Limit {
    Time,
    Size,
    Depth,
    Cycle,
    Fuel,
    Recursion,
}

impl Limit {
    pub(crate) fn describe(self, max_bytes: usize) -> String {
        match self {
            Limit::Time => format!("the time limit ({TIME_MS} ms)"),
            Limit::Size => format!("the size limit (no value or output over {max_bytes} bytes, what the model's context can hold)"),
            Limit::Depth => format!("the nesting limit (lists and maps at most {MAX_DEPTH} deep)"),
            Limit::Cycle => "the no-cycles rule (a namespace may not hold a namespace)".into(),
            Limit::Fuel => format!("the instruction limit ({FUEL} steps)"),
            Limit::Recursion => format!("the recursion limit ({} macro calls deep)", RECURSION / 4),
        }
    }
}

#[derive(Clone, Copy)]
struct Budget {
    deadline: f64,
    max_bytes: usize,
    output_left: usize,
}

thread_local! {
    static BUDGET: Cell<Option<Budget>> = const { Cell::new(None) };
    static TRIPPED: Cell<Option<Limit>> = const { Cell::new(None) };
}

fn budget() -> Budget {
    // Functions only run inside `render`, which sets the budget; a zero budget refuses all.
    BUDGET.get().unwrap_or(Budget { deadline: 0.0, max_bytes: 0, output_left: 0 })
}

fn trip(limit: Limit, what: impl Into<String>) -> Error {
    TRIPPED.set(Some(limit));
    Error::new(ErrorKind::InvalidOperation, what.into())
}

fn check_time() -> Result<(), Error> {
    if crate::clock::now_ms() > budget().deadline {
        return Err(trip(Limit::Time, "rendering took too long"));
    }
    Ok(())
}

/// What a value costs to print: bytes (exact for strings, an upper estimate otherwise), how
/// many values it holds and how deep.
#[derive(Default)]
struct Size {
    bytes: usize,
    nodes: usize,
    depth: usize,
}

fn measure(v: &Value) -> Result<Size, Error> {
    let mut size = Size::default();
    walk(v, 1, false, &budget(), &mut size)?;
    Ok(size)
}

fn walk(v: &Value, depth: usize, stored: bool, b: &Budget, s: &mut Size) -> Result<(), Error> {
    if depth > MAX_DEPTH {
        return Err(trip(Limit::Depth, format!("a value is nested more than {MAX_DEPTH} deep")));
    }
    s.depth = s.depth.max(depth);
    s.nodes += 1;
    if s.nodes.is_multiple_of(4096) {
        check_time()?;
    }
    s.bytes += 4;
    match (v.as_str(), v.as_object()) {
        (Some(text), _) => s.bytes += text.len(),
        (None, Some(obj)) => match obj.repr() {
            // Lazy sequences (`a + b`, `map`, `select`) are walked too: builtins make none that
            // iterate only once.
            ObjectRepr::Seq | ObjectRepr::Iterable => {
                for item in v.try_iter()? {
                    walk(&item, depth + 1, stored, b, s)?;
                }
            }
            ObjectRepr::Map => {
                if stored && v.downcast_object_ref::<Namespace>().is_some() {
                    return Err(trip(Limit::Cycle, "a namespace cannot be stored in a namespace"));
                }
                for key in v.try_iter()? {
                    let item = v.get_item(&key)?;
                    walk(&key, depth + 1, stored, b, s)?;
                    walk(&item, depth + 1, stored, b, s)?;
                }
            }
            _ => s.bytes += 16,
        },
        _ => s.bytes += 20,
    }
    if s.bytes > b.max_bytes {
        return Err(trip(Limit::Size, format!("a value grew past {} bytes", b.max_bytes)));
    }
    Ok(())
}

fn fits(bytes: usize, what: &str) -> Result<(), Error> {
    check_time()?;
    let max = budget().max_bytes;
    if bytes > max {
        return Err(trip(Limit::Size, format!("{what} would make {bytes} bytes, more than {max}")));
    }
    Ok(())
}

fn display_len(v: &Value) -> Result<usize, Error> {
    Ok(v.as_str().map_or(measure(v)?.bytes, str::len))
}

fn arg(args: &[Value], i: usize) -> Value {
    args.get(i).cloned().unwrap_or(Value::UNDEFINED)
}

/// Estimated output of a filter (or the pycompat method of the same name) before it runs.
fn sized(name: &str, args: &[Value]) -> Result<(), Error> {
    let estimate = match name {
        "join" => {
            let s = measure(&arg(args, 0))?;
            s.bytes + s.nodes * display_len(&arg(args, 1))?
        }
        "replace" => {
            let text = arg(args, 0).to_string();
            let (from, to) = (arg(args, 1).to_string(), arg(args, 2).to_string());
            let count = if from.is_empty() { text.chars().count() + 1 } else { text.matches(from.as_str()).count() };
            text.len() + count * to.len()
        }
        "indent" => {
            let text = arg(args, 0).to_string();
            let width = arg(args, 1).as_usize().unwrap_or(display_len(&arg(args, 1))?);
            text.len() + (text.lines().count() + 1) * width
        }
        "format" => {
            let fmt = display_len(&arg(args, 0))?;
            let holes = arg(args, 0).as_str().map_or(0, |f| f.matches(['%', '{']).count());
            let mut rest = 0;
            for a in args.iter().skip(1) {
                rest += measure(a)?.bytes;
            }
            fmt + holes * rest
        }
        "tojson" | "pprint" => {
            let s = measure(&arg(args, 0))?;
            let indent = if name == "pprint" { 2 } else { arg(args, 1).as_usize().unwrap_or(2) };
            s.bytes * 6 + s.nodes * (indent * s.depth + 1)
        }
        _ => 0,
    };
    fits(estimate, name)
}

/// The bytecode with every checked operation routed through this module's functions. Jump
/// targets move with the inserted instructions.
fn rewrite<'s>(old: &Instructions<'s>) -> Instructions<'s> {
    let mut out: Vec<(Instruction<'s>, u32)> = Vec::new();
    let mut index = Vec::new();
    let mut i = 0;
    while let Some(ins) = old.get(i) {
        index.push(out.len() as u32);
        let mut push = |x: Instruction<'s>| out.push((x, i));
        let call = |name: &'static str, n: u16| Instruction::CallFunction(name, Some(n));
        match ins {
            Instruction::EmitRaw(text) => {
                push(Instruction::LoadConst(Value::from(*text)));
                push(Instruction::Emit);
            }
            // Constant folding can leave a large lazy value in a literal (`[1] * 10**8`).
            Instruction::LoadConst(v) if v.as_object().is_some() && !v.is_kwargs() => {
                push(ins.clone());
                push(call(CHECK, 1));
            }
            Instruction::StringConcat => push(call(CONCAT, 2)),
            Instruction::Add => push(call(ADD, 2)),
            Instruction::Mul => push(call(MUL, 2)),
            Instruction::In => push(call(IN, 2)),
            Instruction::Eq => push(call(COMPARISONS[0].0, 2)),
            Instruction::Ne => push(call(COMPARISONS[1].0, 2)),
            Instruction::Lt => push(call(COMPARISONS[2].0, 2)),
            Instruction::Lte => push(call(COMPARISONS[3].0, 2)),
            Instruction::Gt => push(call(COMPARISONS[4].0, 2)),
            Instruction::Gte => push(call(COMPARISONS[5].0, 2)),
            Instruction::SetAttr(name) => {
                // [value, namespace] -> set_attr(value, namespace, name), result dropped.
                push(Instruction::LoadConst(Value::from(*name)));
                push(call(SET_ATTR, 3));
                push(Instruction::DiscardTop);
            }
            Instruction::ApplyFilter(name, n, id) => {
                let renamed = SIZED_FILTERS.iter().find(|(f, _)| f == name).map_or(*name, |(_, to)| to);
                push(Instruction::ApplyFilter(renamed, *n, *id));
                push(call(CHECK, 1));
            }
            Instruction::CallFunction(..) | Instruction::CallMethod(..) | Instruction::CallObject(..) | Instruction::BuildList(..) | Instruction::BuildMap(..) | Instruction::BuildTuple(..) => {
                push(ins.clone());
                push(call(CHECK, 1));
            }
            // Keyword arguments stay as built: passed through a function they would become its
            // keyword arguments. Their values were checked when made.
            other => push(other.clone()),
        }
        i += 1;
    }
    index.push(out.len() as u32);
    let target = |t: u32| index.get(t as usize).copied().unwrap_or(t);
    let mut rewritten = Instructions::new(old.name(), old.source());
    for (mut ins, from) in out {
        match &mut ins {
            Instruction::Iterate(t) | Instruction::Jump(t) | Instruction::JumpIfFalse(t) | Instruction::JumpIfFalseOrPop(t) | Instruction::JumpIfTrueOrPop(t) => *t = target(*t),
            Instruction::BuildMacro(_, t, _) => *t = target(*t),
            _ => {}
        }
        match (old.get_span(from), old.get_line(from)) {
            (Some(span), _) => rewritten.add_with_span(ins, span),
            (None, Some(line)) => rewritten.add_with_line(ins, line.min(u16::MAX as usize) as u16),
            (None, None) => rewritten.add(ins),
        };
    }
    rewritten
}

/// `namespace()`'s object, as minijinja's but owned here so that stores can be checked.
#[derive(Debug, Default)]
struct Namespace {
    data: Mutex<BTreeMap<Arc<str>, Value>>,
}

impl Object for Namespace {
    fn get_value(self: &Arc<Self>, key: &Value) -> Option<Value> {
        self.data.lock().ok()?.get(key.as_str()?).cloned()
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let keys = self.data.lock().map(|d| d.keys().cloned().map(Value::from).collect()).unwrap_or_default();
        Enumerator::Values(keys)
    }
}

impl Namespace {
    fn set(&self, key: &str, value: Value) -> Result<(), Error> {
        walk(&value, 1, true, &budget(), &mut Size::default())?;
        self.data.lock().map_err(|_| Error::new(ErrorKind::InvalidOperation, "namespace poisoned"))?.insert(key.into(), value);
        Ok(())
    }
}

fn namespace(defaults: Option<ValueOrKwargs>) -> Result<Value, Error> {
    let ns = Namespace::default();
    if let Some(defaults) = defaults {
        let defaults = defaults.into_value();
        if defaults.kind() != minijinja::value::ValueKind::Map {
            return Err(Error::new(ErrorKind::InvalidOperation, format!("expected object or keyword arguments, got {}", defaults.kind())));
        }
        for key in defaults.try_iter()? {
            if let Some(k) = key.as_str() {
                ns.set(k, defaults.get_item(&key)?)?;
            }
        }
    }
    Ok(Value::from_object(ns))
}

/// Plain minijinja operators, evaluated once their operands have been sized.
fn operator(expr: &str, a: Value, b: Value) -> Result<Value, Error> {
    static OPS: OnceLock<Environment<'static>> = OnceLock::new();
    OPS.get_or_init(Environment::empty).compile_expression(expr)?.eval(minijinja::context! { a => a, b => b })
}

/// Adds the checked functions, filters, formatter and limits to a template environment.
pub(crate) fn harden(env: &mut Environment<'static>) {
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(RECURSION);
    env.add_function(CHECK, |v: Value| measure(&v).map(|_| v));
    env.add_function("namespace", namespace);
    env.add_function(SET_ATTR, |value: Value, target: Value, name: String| match target.downcast_object_ref::<Namespace>() {
        Some(ns) => ns.set(&name, value).map(|_| Value::UNDEFINED),
        None => Err(Error::new(ErrorKind::InvalidOperation, format!("can only assign to namespaces, not {}", target.kind()))),
    });
    env.add_function(CONCAT, |a: Value, b: Value| {
        fits(display_len(&a)? + display_len(&b)?, "string concatenation")?;
        Ok::<_, Error>(Value::from(format!("{a}{b}")))
    });
    env.add_function(ADD, |a: Value, b: Value| {
        if !a.is_number() || !b.is_number() {
            fits(measure(&a)?.bytes + measure(&b)?.bytes, "+")?;
        }
        operator("a + b", a, b)
    });
    env.add_function(MUL, |a: Value, b: Value| {
        let (text, n) = if a.is_number() { (&b, &a) } else { (&a, &b) };
        if !text.is_number() {
            let count = n.as_usize().unwrap_or(0);
            fits(measure(text)?.bytes.saturating_mul(count), "*")?;
        }
        operator("a * b", a, b)
    });
    env.add_function(IN, |needle: Value, haystack: Value| {
        check_time()?;
        operator("a in b", needle, haystack)
    });
    for (name, op) in COMPARISONS {
        env.add_function(name, move |a: Value, b: Value| {
            check_time()?;
            Ok::<_, Error>(Value::from(op(&a, &b)))
        });
    }
    for &(plain, checked) in SIZED_FILTERS {
        env.add_filter(checked, move |state: &mut State, args: Rest<Value>| {
            sized(plain, &args)?;
            state.apply_filter(plain, &args)
        });
    }
    env.set_unknown_method_callback(|state, value, method, args| {
        if matches!(method, "join" | "replace" | "format") {
            let mut all = vec![value.clone()];
            all.extend_from_slice(args);
            if method == "join" {
                all.swap(0, 1);
            }
            sized(method, &all)?;
        }
        minijinja_contrib::pycompat::unknown_method_callback(state, value, method, args)
    });
    env.set_formatter(|out: &mut Output, state: &mut State, value: &Value| {
        let bytes = display_len(value)?;
        let mut b = budget();
        if bytes > b.output_left {
            return Err(trip(Limit::Size, format!("the rendered prompt grew past {} bytes", b.max_bytes)));
        }
        b.output_left -= bytes;
        BUDGET.set(Some(b));
        minijinja::escape_formatter(out, state, value)
    });
}

/// Checks that `source` compiles.
pub(crate) fn compile(source: &str, config: &TemplateConfig) -> Result<(), Error> {
    CompiledTemplate::new("chat", source, config).map(|_| ())
}

/// Renders `source` with `root` as its context in `env` (prepared by `harden`), in at most
/// `max_bytes` of output. A limit that stops it is returned beside the error.
pub(crate) fn render(env: &Environment<'static>, source: &str, config: &TemplateConfig, root: Value, max_bytes: usize) -> Result<String, (Error, Option<Limit>)> {
    let compiled = CompiledTemplate::new("chat", source, config).map_err(|e| (e, None))?;
    let instructions = rewrite(&compiled.instructions);
    let blocks: BTreeMap<&str, Instructions> = compiled.blocks.iter().map(|(name, b)| (*name, rewrite(b))).collect();
    BUDGET.set(Some(Budget { deadline: crate::clock::now_ms() + TIME_MS, max_bytes, output_left: max_bytes }));
    TRIPPED.set(None);
    let mut text = String::new();
    let result = machinery::eval(env, &instructions, root, &blocks, &mut machinery::make_string_output(&mut text), AutoEscape::None);
    BUDGET.set(None);
    let tripped = TRIPPED.take();
    match result {
        Ok(_) => Ok(text),
        Err(e) => {
            let limit = tripped.or(match e.kind() {
                ErrorKind::OutOfFuel => Some(Limit::Fuel),
                _ if e.to_string().contains("recursion limit exceeded") => Some(Limit::Recursion),
                _ => None,
            });
            Err((e, limit))
        }
    }
}

/// The template settings Hugging Face renders chat templates with (trim_blocks, lstrip_blocks).
pub(crate) fn config() -> Result<TemplateConfig, Error> {
    let syntax = minijinja::syntax::SyntaxConfig::builder().trim_blocks(true).lstrip_blocks(true).build()?;
    Ok(TemplateConfig { syntax_config: syntax, default_auto_escape: Arc::new(|_: &str| AutoEscape::None) })
}
