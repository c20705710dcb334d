//! TL: the small language the `code.*` domains are written in, and its sandboxed interpreter.
//!
//! ```text
//! program := stmt*
//! stmt    := IDENT '=' expr | 'while' expr block | 'if' expr block ('else' (block | if-stmt))?
//!          | 'return' expr | expr            (separators `;` and newlines are optional)
//! block   := '{' stmt* '}'
//! expr    := or; or := and ('||' and)*; and := cmp ('&&' cmp)*
//! cmp     := sum (('=='|'!='|'<'|'<='|'>'|'>=') sum)?
//! sum     := term (('+'|'-') term)*; term := unary (('*'|'/'|'%') unary)*
//! unary   := '-' unary | '!' unary | atom ('[' expr ']')*
//! atom    := INT | IDENT | IDENT '(' args ')' | '(' expr ')' | '[' args ']'
//! ```
//! Values are 64-bit integers and lists of integers; builtins `min`, `max`, `abs`, `len`,
//! `push(list, v)`. Every evaluation step counts against a step limit, list elements against a
//! memory limit, nesting against a depth limit; arithmetic overflow and division by zero are
//! errors. Nothing here can panic, loop forever or allocate without bound.

use std::collections::HashMap;

/// Resource limits of one run.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_steps: u64,
    /// Total list elements alive (each variable's list counted).
    pub max_cells: usize,
    pub max_depth: usize,
    pub max_source: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_steps: 200_000, max_cells: 100_000, max_depth: 64, max_source: 16 * 1024 }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Int(i64),
    List(Vec<i64>),
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Int(i64),
    Ident(String),
    Op(&'static str),
}

const OPS: [&str; 23] = [
    "==", "!=", "<=", ">=", "&&", "||", "<", ">", "+", "-", "*", "/", "%", "=", "(", ")", "{", "}", "[", "]", ",", ";",
    "!",
];

fn lex(src: &str) -> Result<Vec<Tok>, String> {
    let b = src.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    'outer: while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        if c == b'#' {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_digit() {
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let v: i64 = src[start..i]
                .parse()
                .map_err(|_| format!("integer literal too large: {}", &src[start..i.min(start + 24)]))?;
            out.push(Tok::Int(v));
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            let start = i;
            while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                i += 1;
            }
            out.push(Tok::Ident(src[start..i].to_string()));
            continue;
        }
        for op in OPS {
            if b[i..].starts_with(op.as_bytes()) {
                out.push(Tok::Op(op));
                i += op.len();
                continue 'outer;
            }
        }
        let ch = src[i..].chars().next().unwrap_or('?');
        return Err(format!("unexpected character {ch:?}"));
    }
    Ok(out)
}

#[derive(Debug, Clone)]
enum Expr {
    Int(i64),
    Var(String),
    Bin(&'static str, Box<Expr>, Box<Expr>),
    Neg(Box<Expr>),
    Not(Box<Expr>),
    Call(String, Vec<Expr>),
    List(Vec<Expr>),
    Index(Box<Expr>, Box<Expr>),
}

#[derive(Debug, Clone)]
enum Stmt {
    Assign(String, Expr),
    While(Expr, Vec<Stmt>),
    If(Expr, Vec<Stmt>, Vec<Stmt>),
    Return(Expr),
    Expr(Expr),
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
    depth: usize,
    max_depth: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }
    fn is_op(&self, op: &str) -> bool {
        matches!(self.peek(), Some(Tok::Op(o)) if *o == op)
    }
    fn eat(&mut self, op: &str) -> bool {
        if self.is_op(op) {
            self.pos += 1;
            true
        } else {
            false
        }
    }
    fn expect(&mut self, op: &str) -> Result<(), String> {
        if self.eat(op) {
            Ok(())
        } else {
            Err(format!("expected `{op}`, found {}", self.describe()))
        }
    }
    fn describe(&self) -> String {
        match self.peek() {
            None => "end of program".into(),
            Some(Tok::Int(v)) => format!("`{v}`"),
            Some(Tok::Ident(s)) => format!("`{s}`"),
            Some(Tok::Op(o)) => format!("`{o}`"),
        }
    }
    fn enter(&mut self) -> Result<(), String> {
        self.depth += 1;
        if self.depth > self.max_depth {
            Err("program nested too deeply".into())
        } else {
            Ok(())
        }
    }

    fn program(&mut self) -> Result<Vec<Stmt>, String> {
        let mut out = Vec::new();
        while self.peek().is_some() {
            out.push(self.stmt()?);
        }
        Ok(out)
    }

    fn block(&mut self) -> Result<Vec<Stmt>, String> {
        self.expect("{")?;
        self.enter()?;
        let mut out = Vec::new();
        while !self.is_op("}") {
            if self.peek().is_none() {
                return Err("unclosed `{`".into());
            }
            out.push(self.stmt()?);
        }
        self.pos += 1;
        self.depth -= 1;
        Ok(out)
    }

    fn stmt(&mut self) -> Result<Stmt, String> {
        while self.eat(";") {}
        let s = match self.peek().cloned() {
            Some(Tok::Ident(k)) if k == "while" => {
                self.pos += 1;
                let c = self.expr()?;
                Stmt::While(c, self.block()?)
            }
            Some(Tok::Ident(k)) if k == "if" => self.if_stmt()?,
            Some(Tok::Ident(k)) if k == "return" => {
                self.pos += 1;
                Stmt::Return(self.expr()?)
            }
            Some(Tok::Ident(name)) if matches!(self.toks.get(self.pos + 1), Some(Tok::Op("="))) => {
                if ["while", "if", "else", "return"].contains(&name.as_str()) {
                    return Err(format!("cannot assign to keyword `{name}`"));
                }
                self.pos += 2;
                Stmt::Assign(name, self.expr()?)
            }
            None => return Err("expected a statement".into()),
            _ => Stmt::Expr(self.expr()?),
        };
        while self.eat(";") {}
        Ok(s)
    }

    fn if_stmt(&mut self) -> Result<Stmt, String> {
        self.pos += 1; // `if`
        let c = self.expr()?;
        let then = self.block()?;
        let els = if matches!(self.peek(), Some(Tok::Ident(k)) if k == "else") {
            self.pos += 1;
            if matches!(self.peek(), Some(Tok::Ident(k)) if k == "if") {
                self.enter()?;
                let s = self.if_stmt()?;
                self.depth -= 1;
                vec![s]
            } else {
                self.block()?
            }
        } else {
            vec![]
        };
        Ok(Stmt::If(c, then, els))
    }

    fn expr(&mut self) -> Result<Expr, String> {
        self.enter()?;
        let e = self.binary(0);
        self.depth -= 1;
        e
    }

    fn binary(&mut self, level: usize) -> Result<Expr, String> {
        const LEVELS: [&[&str]; 5] =
            [&["||"], &["&&"], &["==", "!=", "<", "<=", ">", ">="], &["+", "-"], &["*", "/", "%"]];
        if level == LEVELS.len() {
            return self.unary();
        }
        let mut lhs = self.binary(level + 1)?;
        // Left-deep chains do not recurse in the parser but do in evaluation and drop.
        let mut chain = 0;
        loop {
            chain += 1;
            if chain > 256 {
                return Err("expression too long".into());
            }
            let op = match self.peek() {
                Some(Tok::Op(o)) if LEVELS[level].contains(o) => *o,
                _ => return Ok(lhs),
            };
            self.pos += 1;
            let rhs = self.binary(level + 1)?;
            lhs = Expr::Bin(op, Box::new(lhs), Box::new(rhs));
            if level == 2 {
                return Ok(lhs); // comparisons do not chain
            }
        }
    }

    fn unary(&mut self) -> Result<Expr, String> {
        if self.eat("-") {
            self.enter()?;
            let e = Expr::Neg(Box::new(self.unary()?));
            self.depth -= 1;
            return Ok(e);
        }
        if self.eat("!") {
            self.enter()?;
            let e = Expr::Not(Box::new(self.unary()?));
            self.depth -= 1;
            return Ok(e);
        }
        let mut e = self.atom()?;
        while self.eat("[") {
            let i = self.expr()?;
            self.expect("]")?;
            e = Expr::Index(Box::new(e), Box::new(i));
        }
        Ok(e)
    }

    fn args(&mut self, close: &str) -> Result<Vec<Expr>, String> {
        let mut a = Vec::new();
        if self.eat(close) {
            return Ok(a);
        }
        loop {
            a.push(self.expr()?);
            if self.eat(close) {
                return Ok(a);
            }
            self.expect(",")?;
        }
    }

    fn atom(&mut self) -> Result<Expr, String> {
        match self.peek().cloned() {
            Some(Tok::Int(v)) => {
                self.pos += 1;
                Ok(Expr::Int(v))
            }
            Some(Tok::Ident(name)) => {
                self.pos += 1;
                if self.eat("(") {
                    Ok(Expr::Call(name, self.args(")")?))
                } else {
                    Ok(Expr::Var(name))
                }
            }
            Some(Tok::Op("(")) => {
                self.pos += 1;
                let e = self.expr()?;
                self.expect(")")?;
                Ok(e)
            }
            Some(Tok::Op("[")) => {
                self.pos += 1;
                Ok(Expr::List(self.args("]")?))
            }
            _ => Err(format!("expected a value, found {}", self.describe())),
        }
    }
}

/// A parsed TL program.
#[derive(Debug, Clone)]
pub struct Program {
    body: Vec<Stmt>,
}

impl Program {
    pub fn parse(src: &str, limits: &Limits) -> Result<Self, String> {
        if src.len() > limits.max_source {
            return Err(format!("program too long ({} bytes)", src.len()));
        }
        let toks = lex(src)?;
        let mut p = Parser { toks, pos: 0, depth: 0, max_depth: limits.max_depth };
        Ok(Program { body: p.program()? })
    }

    /// Run with `inputs` bound; the result of the first `return` reached.
    pub fn run(&self, inputs: &[(&str, i64)], limits: &Limits) -> Result<Value, String> {
        self.run_counted(inputs, limits).0
    }

    /// [`Program::run`], also returning what the run used (for budgets over many runs).
    pub fn run_counted(&self, inputs: &[(&str, i64)], limits: &Limits) -> (Result<Value, String>, Usage) {
        let mut m = Machine { vars: HashMap::new(), steps: 0, limits: *limits, cells: 0, peak_cells: 0 };
        for (k, v) in inputs {
            m.vars.insert(k.to_string(), Value::Int(*v));
        }
        let r = match m.block(&self.body, 0) {
            Ok(Some(v)) => Ok(v),
            Ok(None) => Err("program ended without `return`".into()),
            Err(e) => Err(e),
        };
        (r, Usage { steps: m.steps, peak_cells: m.peak_cells.max(m.cells) })
    }
}

/// Resources one run used: evaluation steps, and the most list cells alive at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub steps: u64,
    pub peak_cells: usize,
}

struct Machine {
    vars: HashMap<String, Value>,
    steps: u64,
    limits: Limits,
    cells: usize,
    /// Highest `cells` seen (checked at each step).
    peak_cells: usize,
}

fn int(v: Value) -> Result<i64, String> {
    match v {
        Value::Int(i) => Ok(i),
        Value::List(_) => Err("expected an integer, got a list".into()),
    }
}

impl Machine {
    fn tick(&mut self) -> Result<(), String> {
        self.steps += 1;
        self.peak_cells = self.peak_cells.max(self.cells);
        if self.steps > self.limits.max_steps {
            Err(format!("step limit of {} exceeded", self.limits.max_steps))
        } else {
            Ok(())
        }
    }

    fn block(&mut self, stmts: &[Stmt], depth: usize) -> Result<Option<Value>, String> {
        if depth > self.limits.max_depth {
            return Err("nested too deeply".into());
        }
        for s in stmts {
            self.tick()?;
            match s {
                Stmt::Assign(name, e) => {
                    let v = self.eval(e, 0)?;
                    let new_cells = if let Value::List(l) = &v { l.len() } else { 0 };
                    let old_cells = match self.vars.get(name) {
                        Some(Value::List(l)) => l.len(),
                        _ => 0,
                    };
                    self.cells = self.cells + new_cells - old_cells;
                    if self.cells > self.limits.max_cells {
                        return Err(format!("memory limit of {} list cells exceeded", self.limits.max_cells));
                    }
                    self.vars.insert(name.clone(), v);
                }
                Stmt::While(c, body) => {
                    while int(self.eval(c, 0)?)? != 0 {
                        self.tick()?;
                        if let Some(v) = self.block(body, depth + 1)? {
                            return Ok(Some(v));
                        }
                    }
                }
                Stmt::If(c, a, b) => {
                    let branch = if int(self.eval(c, 0)?)? != 0 { a } else { b };
                    if let Some(v) = self.block(branch, depth + 1)? {
                        return Ok(Some(v));
                    }
                }
                Stmt::Return(e) => return Ok(Some(self.eval(e, 0)?)),
                Stmt::Expr(e) => {
                    self.eval(e, 0)?;
                }
            }
        }
        Ok(None)
    }

    fn eval(&mut self, e: &Expr, depth: usize) -> Result<Value, String> {
        self.tick()?;
        if depth > 4 * self.limits.max_depth {
            return Err("expression nested too deeply".into());
        }
        let d = depth + 1;
        Ok(match e {
            Expr::Int(v) => Value::Int(*v),
            Expr::Var(n) => self.vars.get(n).cloned().ok_or_else(|| format!("unknown variable `{n}`"))?,
            Expr::Neg(a) => Value::Int(int(self.eval(a, d)?)?.checked_neg().ok_or("overflow")?),
            Expr::Not(a) => Value::Int((int(self.eval(a, d)?)? == 0) as i64),
            Expr::Bin(op, a, b) => {
                let x = int(self.eval(a, d)?)?;
                if *op == "&&" && x == 0 {
                    return Ok(Value::Int(0));
                }
                if *op == "||" && x != 0 {
                    return Ok(Value::Int(1));
                }
                let y = int(self.eval(b, d)?)?;
                Value::Int(match *op {
                    "+" => x.checked_add(y).ok_or("overflow")?,
                    "-" => x.checked_sub(y).ok_or("overflow")?,
                    "*" => x.checked_mul(y).ok_or("overflow")?,
                    "/" => x.checked_div(y).ok_or("division by zero or overflow")?,
                    "%" => x.checked_rem(y).ok_or("division by zero or overflow")?,
                    "==" => (x == y) as i64,
                    "!=" => (x != y) as i64,
                    "<" => (x < y) as i64,
                    "<=" => (x <= y) as i64,
                    ">" => (x > y) as i64,
                    ">=" => (x >= y) as i64,
                    "&&" | "||" => (y != 0) as i64,
                    other => return Err(format!("unknown operator {other}")),
                })
            }
            Expr::List(items) => {
                if items.len() > self.limits.max_cells {
                    return Err("list literal too large".into());
                }
                let mut v = Vec::with_capacity(items.len());
                for it in items {
                    v.push(int(self.eval(it, d)?)?);
                }
                Value::List(v)
            }
            Expr::Index(l, i) => {
                let list = self.eval(l, d)?;
                let i = int(self.eval(i, d)?)?;
                match list {
                    Value::List(v) => *usize::try_from(i)
                        .ok()
                        .and_then(|i| v.get(i))
                        .ok_or_else(|| format!("index {i} out of range"))?,
                    Value::Int(_) => return Err("indexing an integer".into()),
                }
                .into()
            }
            Expr::Call(name, args) => self.call(name, args, d)?,
        })
    }

    fn call(&mut self, name: &str, args: &[Expr], d: usize) -> Result<Value, String> {
        let arity = |n: usize| -> Result<(), String> {
            if args.len() == n {
                Ok(())
            } else {
                Err(format!("`{name}` takes {n} argument(s), got {}", args.len()))
            }
        };
        Ok(match name {
            "min" | "max" => {
                if args.is_empty() {
                    return Err(format!("`{name}` needs arguments"));
                }
                let mut vals = Vec::new();
                for a in args {
                    match self.eval(a, d)? {
                        Value::Int(v) => vals.push(v),
                        Value::List(l) => vals.extend(l),
                    }
                }
                let r = if name == "min" { vals.iter().min() } else { vals.iter().max() };
                Value::Int(*r.ok_or_else(|| format!("`{name}` of an empty list"))?)
            }
            "abs" => {
                arity(1)?;
                Value::Int(int(self.eval(&args[0], d)?)?.checked_abs().ok_or("overflow")?)
            }
            "len" => {
                arity(1)?;
                match self.eval(&args[0], d)? {
                    Value::List(l) => Value::Int(l.len() as i64),
                    Value::Int(_) => return Err("len of an integer".into()),
                }
            }
            "push" => {
                arity(2)?;
                let Expr::Var(var) = &args[0] else {
                    return Err("push needs a list variable".into());
                };
                let v = int(self.eval(&args[1], d)?)?;
                self.cells += 1;
                if self.cells > self.limits.max_cells {
                    return Err(format!("memory limit of {} list cells exceeded", self.limits.max_cells));
                }
                match self.vars.get_mut(var) {
                    Some(Value::List(l)) => {
                        l.push(v);
                        Value::Int(l.len() as i64)
                    }
                    _ => return Err(format!("`{var}` is not a list")),
                }
            }
            other => return Err(format!("unknown function `{other}`")),
        })
    }
}

impl From<i64> for Value {
    fn from(v: i64) -> Self {
        Value::Int(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(src: &str, x: i64) -> Result<Value, String> {
        let l = Limits::default();
        Program::parse(src, &l)?.run(&[("x", x)], &l)
    }

    #[test]
    fn programs_of_the_suite_run() {
        assert_eq!(run("return (x+3)*2", 4), Ok(Value::Int(14)));
        assert_eq!(run("return max(x, 7)", 3), Ok(Value::Int(7)));
        assert_eq!(run("if x < 0 { return 5 } return x", -2), Ok(Value::Int(5)));
        assert_eq!(run("s = 0 i = 1 while i <= x { s = s + i i = i + 1 } return s", 10), Ok(Value::Int(55)));
        assert_eq!(
            run("c = 0 i = 1 while i <= x { if i % 3 == 0 { c = c + 1 } i = i + 1 } return c", 10),
            Ok(Value::Int(3))
        );
        assert_eq!(
            run("l = [] i = 0 while i < x { push(l, i*i) i = i + 1 } return l[x-1] + len(l)", 4),
            Ok(Value::Int(13))
        );
        assert_eq!(run("if x > 1 { return 1 } else if x > 0 { return 2 } else { return 3 }", 1), Ok(Value::Int(2)));
    }

    #[test]
    fn limits_and_errors_are_clean() {
        assert!(run("while 1 { }", 0).unwrap_err().contains("step limit"));
        assert!(run("l = [] while 1 { push(l, 1) }", 0).unwrap_err().contains("limit"));
        assert!(run("return 1/0", 0).unwrap_err().contains("division"));
        assert!(run("return 9223372036854775807 + 1", 0).unwrap_err().contains("overflow"));
        assert!(run("return 99999999999999999999", 0).unwrap_err().contains("too large"));
        assert!(run(&format!("return {}1{}", "(".repeat(5000), ")".repeat(5000)), 0).is_err());
        assert!(run(&"-".repeat(100_000), 0).is_err());
        assert!(run("x = 1", 0).unwrap_err().contains("without `return`"));
        assert!(run("return y", 0).unwrap_err().contains("unknown variable"));
        assert!(run("return @", 0).unwrap_err().contains("unexpected character"));
        assert!(run("return [1,2][5]", 0).unwrap_err().contains("out of range"));
    }
}
