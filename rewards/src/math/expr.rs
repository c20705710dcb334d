//! A small, bounded expression parser and evaluator for math answers.
//!
//! Grammar (on normalised text: no whitespace except one space after a `\command`):
//!
//! ```text
//! expr   := term (('+' | '-') term)*
//! term   := unary (('*' | '\cdot' | '\times' | '/' | '\div') unary | power)*   -- juxtaposition multiplies
//! unary  := ('-' | '+') unary | power
//! power  := fact ('^' (digits | '-' unary | arg))?                        -- `2^10` = 1024 (as math-verify)
//! atom   := number | mixed | '(' expr ')' | '[' expr ']' | '{' expr '}' | '\frac' arg arg
//!         | '\sqrt' ('[' expr ']')? arg | '\pi' | '\infty' | '\sin' … '\exp' arg | variable
//! fact   := atom '!'+                                                     -- n! for integers n ≥ 0
//! mixed  := integer '\frac' int-arg int-arg                               -- `2\frac{1}{2}` = 5/2
//! variable := letter ('_' arg)? | '\alpha' … '\omega'
//! ```
//!
//! Values are exact rationals (`i128`) while every operation stays exact and in range, and
//! `f64` otherwise (roots, `\pi`, non-integer powers, i128 overflow). A value that leaves
//! `f64`'s range from finite inputs (`10^{400}`, `200!`, `10^{-400}`) has NO value (`None`):
//! only a literal `\infty` is infinite, so `10^{400}` ≠ `\infty` and `200!` ≠ `300!`.
//!
//! Constants compare by [`num_eq`]: two exact rationals exactly (cross-multiplied), except
//! that a finite decimal written to at least [`MIN_ROUNDED_PLACES`] places equals a rational
//! without a finite decimal form when it is that rational rounded to its places
//! (`|r − d| ≤ ½·10^{-k}` for `k` places: `0.333333` = `1/3`, `0.33` ≠ `1/3`, as math-verify,
//! which rounds at 6 places); anything involving a float within a purely relative
//! [`TOLERANCE`] (zero equals only zero), so `10^{-8}` ≠ `2\cdot10^{-8}`. Two expressions with
//! variables are equal when they agree at [`POINTS`] pseudo-random points with coordinates
//! in ±(0.3, 3.0), signs alternating (so `\sqrt{x^2}` ≠ `x`, as sympy); a point where either
//! side is undefined (NaN, ±∞, division by zero) is skipped, and fewer than two usable points
//! is "not equal".
//!
//! Bounds (the input is untrusted model output): the text is at most [`MAX_LEN`] chars, the
//! parser recurses at most [`MAX_DEPTH`] levels, at most [`MAX_VARS`] distinct variables,
//! exact integer powers only up to exponent [`MAX_EXACT_POW`] (then `f64`), and every integer
//! operation is checked (overflow falls back to `f64`, never panics).

/// Longest expression text parsed.
pub const MAX_LEN: usize = 512;
/// Deepest nesting of the recursive-descent parser.
pub const MAX_DEPTH: usize = 48;
/// Most distinct variables in one comparison.
pub const MAX_VARS: usize = 8;
/// Largest exponent computed exactly.
pub const MAX_EXACT_POW: i128 = 256;
/// Evaluation points for expressions with variables.
pub const POINTS: u64 = 9;
/// Relative tolerance of a comparison involving a float (`\sqrt{3}` = `1.7320508`,
/// `\pi` ≠ `3.14159`): `|x − y| ≤ TOLERANCE · max(|x|, |y|)`, never absolute.
pub const TOLERANCE: f64 = 4e-7;
/// Fewest decimal places at which a finite decimal may stand for a rounded rational
/// (`0.333333` = `1/3`; math-verify compares such pairs rounded to 6 places).
pub const MIN_ROUNDED_PLACES: u32 = 6;
/// Largest `n` whose `n!` is a finite `f64` (`171!` overflows, so has no value).
pub const MAX_FACTORIAL: i128 = 170;

/// A number: exact rational `n/d` (`d > 0`, lowest terms) or a float.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    Q(i128, i128),
    F(f64),
}

fn gcd(a: u128, b: u128) -> u128 {
    let (mut a, mut b) = (a, b);
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.max(1)
}

impl Num {
    /// `n/d` in lowest terms; `None` for `d == 0`; falls back to a float when out of range.
    pub fn ratio(n: i128, d: i128) -> Option<Num> {
        if d == 0 {
            return None;
        }
        let g = gcd(n.unsigned_abs(), d.unsigned_abs());
        let g = i128::try_from(g).ok();
        let exact = g.and_then(|g| {
            let (n, d) = (n / g, d / g);
            if d < 0 {
                Some((n.checked_neg()?, d.checked_neg()?))
            } else {
                Some((n, d))
            }
        });
        Some(match exact {
            Some((n, d)) => Num::Q(n, d),
            None => Num::F(n as f64 / d as f64),
        })
    }

    pub fn int(n: i128) -> Num {
        Num::Q(n, 1)
    }

    pub fn f64(self) -> f64 {
        match self {
            Num::Q(n, d) => n as f64 / d as f64,
            Num::F(f) => f,
        }
    }

    fn exact2(a: Num, b: Num) -> Option<(i128, i128, i128, i128)> {
        match (a, b) {
            (Num::Q(p, q), Num::Q(r, s)) => Some((p, q, r, s)),
            _ => None,
        }
    }

    fn add(self, o: Num) -> Num {
        Num::exact2(self, o)
            .and_then(|(p, q, r, s)| Num::ratio(p.checked_mul(s)?.checked_add(r.checked_mul(q)?)?, q.checked_mul(s)?))
            .unwrap_or(Num::F(self.f64() + o.f64()))
    }

    fn neg(self) -> Num {
        match self {
            Num::Q(n, d) => n.checked_neg().map_or(Num::F(-(n as f64) / d as f64), |n| Num::Q(n, d)),
            Num::F(f) => Num::F(-f),
        }
    }

    fn mul(self, o: Num) -> Num {
        Num::exact2(self, o)
            .and_then(|(p, q, r, s)| Num::ratio(p.checked_mul(r)?, q.checked_mul(s)?))
            .unwrap_or(Num::F(self.f64() * o.f64()))
    }

    /// `None` on exact division by zero.
    fn div(self, o: Num) -> Option<Num> {
        if let Some((p, q, r, s)) = Num::exact2(self, o) {
            if r == 0 {
                return None;
            }
            if let Some(v) = p.checked_mul(s).zip(q.checked_mul(r)).and_then(|(n, d)| Num::ratio(n, d)) {
                return Some(v);
            }
        }
        Some(Num::F(self.f64() / o.f64()))
    }

    fn pow(self, e: Num) -> Option<Num> {
        if let (Num::Q(n, d), Num::Q(k, 1)) = (self, e) {
            if k.abs() <= MAX_EXACT_POW {
                if let Some(v) = exact_pow(n, d, k) {
                    return v;
                }
            }
        }
        let (b, x) = (self.f64(), e.f64());
        let v = b.powf(x);
        // finite base and exponent, result out of f64's range (`10^{400}`, `10^{-400}`)
        let out_of_range = v.is_infinite() || (v == 0.0 && b != 0.0);
        if b.is_finite() && x.is_finite() && out_of_range {
            return None;
        }
        Some(Num::F(v))
    }

    fn sqrt(self) -> Num {
        if let Num::Q(n, d) = self {
            if let (Some(a), Some(b)) = (isqrt(n), isqrt(d)) {
                return Num::Q(a, b);
            }
        }
        Num::F(self.f64().sqrt())
    }
}

/// `(n/d)^k` exactly: `Some(None)` for 0 to a negative power, `None` on overflow.
fn exact_pow(n: i128, d: i128, k: i128) -> Option<Option<Num>> {
    let (mut num, mut den) = (1i128, 1i128);
    for _ in 0..k.unsigned_abs() {
        num = num.checked_mul(n)?;
        den = den.checked_mul(d)?;
    }
    if k < 0 {
        if num == 0 {
            return Some(None);
        }
        (num, den) = (den, num);
    }
    Some(Num::ratio(num, den))
}

fn isqrt(n: i128) -> Option<i128> {
    if n < 0 {
        return None;
    }
    let r = (n as f64).sqrt().round() as i128;
    (r.saturating_sub(1)..=r.saturating_add(1)).find(|c| c.checked_mul(*c) == Some(n))
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Func {
    Sin,
    Cos,
    Tan,
    Ln,
    Log,
    Exp,
}

/// Parsed expression.
#[derive(Debug, Clone, PartialEq)]
pub enum Expr {
    Num(Num),
    Var(String),
    Pi,
    Inf,
    Neg(Box<Expr>),
    Add(Box<Expr>, Box<Expr>),
    Sub(Box<Expr>, Box<Expr>),
    Mul(Box<Expr>, Box<Expr>),
    Div(Box<Expr>, Box<Expr>),
    Pow(Box<Expr>, Box<Expr>),
    Sqrt(Box<Expr>),
    /// `\sqrt[n]{x}`: (index, radicand).
    Root(Box<Expr>, Box<Expr>),
    Call(Func, Box<Expr>),
    /// `n!`.
    Fact(Box<Expr>),
}

const GREEK: &[&str] = &[
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "varepsilon",
    "zeta",
    "eta",
    "theta",
    "vartheta",
    "iota",
    "kappa",
    "lambda",
    "mu",
    "nu",
    "xi",
    "rho",
    "sigma",
    "tau",
    "upsilon",
    "phi",
    "varphi",
    "chi",
    "psi",
    "omega",
    "Gamma",
    "Delta",
    "Theta",
    "Lambda",
    "Xi",
    "Sigma",
    "Phi",
    "Psi",
    "Omega",
];

struct Parser {
    s: Vec<char>,
    i: usize,
    depth: usize,
}

impl Parser {
    fn peek(&mut self) -> Option<char> {
        while self.s.get(self.i) == Some(&' ') {
            self.i += 1;
        }
        self.s.get(self.i).copied()
    }

    fn eat(&mut self, c: char) -> bool {
        if self.peek() == Some(c) {
            self.i += 1;
            true
        } else {
            false
        }
    }

    /// The `\name` at the cursor, without consuming it.
    fn command_at(&mut self) -> Option<String> {
        if self.peek() != Some('\\') {
            return None;
        }
        let name: String = self.s[self.i + 1..].iter().take_while(|c| c.is_ascii_alphabetic()).collect();
        (!name.is_empty()).then_some(name)
    }

    fn eat_command(&mut self, name: &str) -> bool {
        if self.command_at().as_deref() == Some(name) {
            self.i += 1 + name.len();
            true
        } else {
            false
        }
    }

    fn enter(&mut self) -> Option<()> {
        self.depth += 1;
        (self.depth <= MAX_DEPTH).then_some(())
    }

    fn expr(&mut self) -> Option<Expr> {
        self.enter()?;
        let mut lhs = self.term()?;
        loop {
            if self.eat('+') {
                lhs = Expr::Add(Box::new(lhs), Box::new(self.term()?));
            } else if self.eat('-') {
                lhs = Expr::Sub(Box::new(lhs), Box::new(self.term()?));
            } else {
                break;
            }
        }
        self.depth -= 1;
        Some(lhs)
    }

    fn starts_factor(&mut self) -> bool {
        match self.peek() {
            Some(c) if c.is_ascii_alphanumeric() || c == '(' || c == '{' || c == '.' => true,
            Some('\\') => {
                matches!(self.command_at().as_deref(), Some(n) if !["cdot", "times", "div"].contains(&n))
            }
            _ => false,
        }
    }

    fn term(&mut self) -> Option<Expr> {
        let mut lhs = self.unary()?;
        loop {
            if self.eat('*') || self.eat_command("cdot") || self.eat_command("times") {
                lhs = Expr::Mul(Box::new(lhs), Box::new(self.unary()?));
            } else if self.eat('/') || self.eat_command("div") {
                lhs = Expr::Div(Box::new(lhs), Box::new(self.unary()?));
            } else if self.starts_factor() {
                lhs = Expr::Mul(Box::new(lhs), Box::new(self.power()?));
            } else {
                break;
            }
        }
        Some(lhs)
    }

    fn unary(&mut self) -> Option<Expr> {
        self.enter()?;
        let e = if self.eat('-') {
            Expr::Neg(Box::new(self.unary()?))
        } else if self.eat('+') {
            self.unary()?
        } else {
            self.power()?
        };
        self.depth -= 1;
        Some(e)
    }

    fn power(&mut self) -> Option<Expr> {
        let mut base = self.atom()?;
        while self.s.get(self.i) == Some(&'!') {
            self.i += 1;
            base = Expr::Fact(Box::new(base));
        }
        if self.eat('^') {
            let exp = match self.peek()? {
                '-' => self.unary()?,
                // `2^10` as people type it: the whole digit run (as math-verify), not `2^1·0`
                c if c.is_ascii_digit() => Expr::Num(decimal(&self.digits()?, "")),
                _ => self.arg()?,
            };
            return Some(Expr::Pow(Box::new(base), Box::new(exp)));
        }
        Some(base)
    }

    /// A command or macro argument: `{expr}` or a single digit, letter or `\command` atom.
    fn arg(&mut self) -> Option<Expr> {
        self.enter()?;
        let e = match self.peek()? {
            '{' => {
                self.i += 1;
                let e = self.expr()?;
                self.eat('}').then_some(e)?
            }
            c if c.is_ascii_digit() => {
                self.i += 1;
                Expr::Num(Num::int(i128::from(c.to_digit(10)?)))
            }
            _ => self.atom()?,
        };
        self.depth -= 1;
        Some(e)
    }

    /// `{digits}` or one digit, for the parts of a mixed number.
    fn int_arg(&mut self) -> Option<i128> {
        if self.eat('{') {
            let n = self.digits()?;
            return if self.eat('}') { n.parse().ok() } else { None };
        }
        let c = self.peek()?;
        c.is_ascii_digit().then_some(())?;
        self.i += 1;
        Some(i128::from(c.to_digit(10)?))
    }

    fn digits(&mut self) -> Option<String> {
        self.peek();
        let d: String = self.s[self.i..].iter().take_while(|c| c.is_ascii_digit()).collect();
        self.i += d.len();
        (!d.is_empty()).then_some(d)
    }

    fn number(&mut self) -> Option<Expr> {
        let int = self.digits().unwrap_or_default();
        let mut frac = String::new();
        if self.s.get(self.i) == Some(&'.') && self.s.get(self.i + 1).is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
            frac = self.digits()?;
        }
        if int.is_empty() && frac.is_empty() {
            return None;
        }
        if frac.is_empty() {
            if let Some(v) = self.mixed_tail(&int) {
                return Some(Expr::Num(v));
            }
        }
        Some(Expr::Num(decimal(&int, &frac)))
    }

    /// After an integer: `\frac{a}{b}` with literal integers makes a mixed number.
    fn mixed_tail(&mut self, whole: &str) -> Option<Num> {
        let save = self.i;
        let r = (|| {
            if !self.eat_command("frac") {
                return None;
            }
            let (a, b) = (self.int_arg()?, self.int_arg()?);
            let w: i128 = whole.parse().ok()?;
            Num::ratio(w.checked_mul(b)?.checked_add(a)?, b)
        })();
        if r.is_none() {
            self.i = save;
        }
        r
    }

    fn group(&mut self, close: char) -> Option<Expr> {
        let e = self.expr()?;
        self.eat(close).then_some(e)
    }

    fn atom(&mut self) -> Option<Expr> {
        self.enter()?;
        let c = self.peek()?;
        let e = match c {
            '0'..='9' | '.' => self.number()?,
            '(' => {
                self.i += 1;
                self.group(')')?
            }
            '[' => {
                self.i += 1;
                self.group(']')?
            }
            '{' => {
                self.i += 1;
                self.group('}')?
            }
            '\\' => self.command()?,
            c if c.is_ascii_alphabetic() => {
                self.i += 1;
                Expr::Var(self.subscripted(c.to_string())?)
            }
            _ => return None,
        };
        self.depth -= 1;
        Some(e)
    }

    /// `x_1`, `x_{12}`: the subscript becomes part of the variable's name.
    fn subscripted(&mut self, mut name: String) -> Option<String> {
        if self.s.get(self.i) != Some(&'_') {
            return Some(name);
        }
        self.i += 1;
        name.push('_');
        if self.s.get(self.i) == Some(&'{') {
            let close = self.s[self.i..].iter().position(|&c| c == '}')?;
            name.extend(&self.s[self.i + 1..self.i + close]);
            self.i += close + 1;
        } else {
            let c = *self.s.get(self.i).filter(|c| c.is_ascii_alphanumeric())?;
            name.push(c);
            self.i += 1;
        }
        Some(name)
    }

    fn command(&mut self) -> Option<Expr> {
        let name = self.command_at()?;
        self.i += 1 + name.len();
        Some(match name.as_str() {
            "frac" => Expr::Div(Box::new(self.arg()?), Box::new(self.arg()?)),
            "sqrt" => {
                if self.eat('[') {
                    let n = self.group(']')?;
                    Expr::Root(Box::new(n), Box::new(self.arg()?))
                } else {
                    Expr::Sqrt(Box::new(self.arg()?))
                }
            }
            "pi" => Expr::Pi,
            "infty" | "infinity" => Expr::Inf,
            "sin" | "cos" | "tan" | "ln" | "log" | "exp" => {
                let f = match name.as_str() {
                    "sin" => Func::Sin,
                    "cos" => Func::Cos,
                    "tan" => Func::Tan,
                    "ln" => Func::Ln,
                    "log" => Func::Log,
                    _ => Func::Exp,
                };
                Expr::Call(f, Box::new(self.power()?))
            }
            g if GREEK.contains(&g) => Expr::Var(self.subscripted(format!("\\{g}"))?),
            _ => return None,
        })
    }
}

/// `n!` for an integer `0 ≤ n ≤ MAX_FACTORIAL` (exact while it fits, then `f64`); no value
/// for larger `n` (it would overflow `f64`).
fn factorial(n: Num) -> Option<Num> {
    let Num::Q(n, 1) = n else { return None };
    if !(0..=MAX_FACTORIAL).contains(&n) {
        return None;
    }
    Some((2..=n).fold(Num::int(1), |acc, k| acc.mul(Num::int(k))))
}

fn decimal(int: &str, frac: &str) -> Num {
    let digits = format!("{int}{frac}");
    if digits.len() <= 30 {
        if let (Ok(n), Some(d)) = (digits.parse::<i128>(), 10i128.checked_pow(frac.len() as u32)) {
            if let Some(v) = Num::ratio(n, d) {
                return v;
            }
        }
    }
    format!("{}.{}", if int.is_empty() { "0" } else { int }, if frac.is_empty() { "0" } else { frac })
        .parse::<f64>()
        .map_or(Num::F(f64::NAN), Num::F)
}

/// Parse a whole (normalised) expression; `None` when it is not one we understand.
pub fn parse(text: &str) -> Option<Expr> {
    if text.chars().count() > MAX_LEN {
        return None;
    }
    let mut p = Parser { s: text.chars().collect(), i: 0, depth: 0 };
    let e = p.expr()?;
    (p.peek().is_none()).then_some(e)
}

/// Distinct variable names, sorted, appended to `out`.
pub fn variables(e: &Expr, out: &mut Vec<String>) {
    match e {
        Expr::Var(v) => {
            if !out.contains(v) {
                out.push(v.clone());
                out.sort();
            }
        }
        Expr::Num(_) | Expr::Pi | Expr::Inf => {}
        Expr::Neg(a) | Expr::Sqrt(a) | Expr::Call(_, a) | Expr::Fact(a) => variables(a, out),
        Expr::Add(a, b) | Expr::Sub(a, b) | Expr::Mul(a, b) | Expr::Div(a, b) | Expr::Pow(a, b) | Expr::Root(a, b) => {
            variables(a, out);
            variables(b, out);
        }
    }
}

/// Does `e` contain a literal `\infty`?
fn has_infinity(e: &Expr) -> bool {
    match e {
        Expr::Inf => true,
        Expr::Num(_) | Expr::Var(_) | Expr::Pi => false,
        Expr::Neg(a) | Expr::Sqrt(a) | Expr::Call(_, a) | Expr::Fact(a) => has_infinity(a),
        Expr::Add(a, b) | Expr::Sub(a, b) | Expr::Mul(a, b) | Expr::Div(a, b) | Expr::Pow(a, b) | Expr::Root(a, b) => {
            has_infinity(a) || has_infinity(b)
        }
    }
}

/// Value of `e` with the variables bound in `env` (a variable not in `env` has no value);
/// `None` when a finite computation overflows to ±∞ (only a literal `\infty` is infinite).
pub fn eval(e: &Expr, env: &[(String, f64)]) -> Option<Num> {
    let v = eval_node(e, env)?;
    (!v.f64().is_infinite() || has_infinity(e)).then_some(v)
}

fn eval_node(e: &Expr, env: &[(String, f64)]) -> Option<Num> {
    Some(match e {
        Expr::Num(n) => *n,
        Expr::Var(v) => Num::F(env.iter().find(|(k, _)| k == v)?.1),
        Expr::Pi => Num::F(std::f64::consts::PI),
        Expr::Inf => Num::F(f64::INFINITY),
        Expr::Neg(a) => eval(a, env)?.neg(),
        Expr::Add(a, b) => eval(a, env)?.add(eval(b, env)?),
        Expr::Sub(a, b) => eval(a, env)?.add(eval(b, env)?.neg()),
        Expr::Mul(a, b) => eval(a, env)?.mul(eval(b, env)?),
        Expr::Div(a, b) => eval(a, env)?.div(eval(b, env)?)?,
        Expr::Pow(a, b) => eval(a, env)?.pow(eval(b, env)?)?,
        Expr::Sqrt(a) => eval(a, env)?.sqrt(),
        Expr::Root(n, a) => Num::F(eval(a, env)?.f64().powf(1.0 / eval(n, env)?.f64())),
        Expr::Fact(a) => factorial(eval(a, env)?)?,
        Expr::Call(f, a) => {
            let x = eval(a, env)?.f64();
            Num::F(match f {
                Func::Sin => x.sin(),
                Func::Cos => x.cos(),
                Func::Tan => x.tan(),
                Func::Ln => x.ln(),
                Func::Log => x.log10(),
                Func::Exp => x.exp(),
            })
        }
    })
}

/// Places after the point of a positive denominator `d` as a finite decimal: `max(a, b)` for
/// `d = 2^a·5^b`; `None` when `n/d` (lowest terms) has no finite decimal form (`1/3`).
fn decimal_places(d: i128) -> Option<u32> {
    if d <= 0 {
        return None;
    }
    let (mut d, mut twos, mut fives) = (d, 0u32, 0u32);
    while d % 2 == 0 {
        d /= 2;
        twos += 1;
    }
    while d % 5 == 0 {
        d /= 5;
        fives += 1;
    }
    (d == 1).then_some(twos.max(fives))
}

/// `p/q == r/s` exactly (cross-multiplied; on overflow the lowest-terms parts compare).
fn exact_eq(p: i128, q: i128, r: i128, s: i128) -> bool {
    match (p.checked_mul(s), r.checked_mul(q)) {
        (Some(x), Some(y)) => x == y,
        _ => (p, q) == (r, s),
    }
}

/// Is the finite decimal `n/d` (at least [`MIN_ROUNDED_PLACES`] places) the rational `p/q`
/// (no finite decimal form) rounded to its `k` places: `|p/q − n/d| ≤ ½·10^{-k}`, i.e.
/// `2·10^k·|p·d − n·q| ≤ q·d`? Overflow is "no".
fn rounds_to(p: i128, q: i128, n: i128, d: i128) -> bool {
    let Some(k) = decimal_places(d).filter(|&k| k >= MIN_ROUNDED_PLACES) else { return false };
    if decimal_places(q).is_some() {
        return false;
    }
    within_half_unit(p, q, n, d, k).unwrap_or(false)
}

/// `2·10^k·|p·d − n·q| ≤ q·d`, `None` on overflow.
fn within_half_unit(p: i128, q: i128, n: i128, d: i128, k: u32) -> Option<bool> {
    let diff = p.checked_mul(d)?.checked_sub(n.checked_mul(q)?)?.checked_abs()?;
    let lhs = diff.checked_mul(10i128.checked_pow(k)?)?.checked_mul(2)?;
    Some(lhs <= q.checked_mul(d)?)
}

/// Numeric equality (see the module header): exact rationals exactly, or a rational and a
/// decimal of at least [`MIN_ROUNDED_PLACES`] places that is it rounded (`1/3` = `0.333333`);
/// otherwise within the relative [`TOLERANCE`]; equal infinities are equal, NaN equals nothing.
pub fn num_eq(a: Num, b: Num) -> bool {
    if let (Num::Q(p, q), Num::Q(r, s)) = (a, b) {
        return exact_eq(p, q, r, s) || rounds_to(p, q, r, s) || rounds_to(r, s, p, q);
    }
    let (x, y) = (a.f64(), b.f64());
    if x.is_infinite() || y.is_infinite() {
        return x == y;
    }
    (x - y).abs() <= TOLERANCE * x.abs().max(y.abs())
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Are two expressions equal (exactly for constants, at sample points with variables)?
pub fn expr_eq(a: &Expr, b: &Expr) -> bool {
    let mut vars = Vec::new();
    variables(a, &mut vars);
    variables(b, &mut vars);
    if vars.is_empty() {
        return matches!((eval(a, &[]), eval(b, &[])), (Some(x), Some(y)) if num_eq(x, y));
    }
    if vars.len() > MAX_VARS {
        return false;
    }
    let mut usable = 0;
    for p in 0..POINTS {
        let env: Vec<(String, f64)> = vars
            .iter()
            .enumerate()
            .map(|(k, v)| {
                let h = splitmix(p * 1_000_003 + k as u64 + 17);
                let sign = if (p + k as u64) % 2 == 0 { 1.0 } else { -1.0 };
                (v.clone(), sign * (0.3 + (h >> 11) as f64 / (1u64 << 53) as f64 * 2.7))
            })
            .collect();
        let fin = |n: Option<Num>| n.map(Num::f64).filter(|x| x.is_finite());
        if let (Some(x), Some(y)) = (fin(eval(a, &env)), fin(eval(b, &env))) {
            if !num_eq(Num::F(x), Num::F(y)) {
                return false;
            }
            usable += 1;
        }
    }
    usable >= 2
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eq(a: &str, b: &str) -> bool {
        expr_eq(&parse(a).unwrap_or_else(|| panic!("{a}")), &parse(b).unwrap_or_else(|| panic!("{b}")))
    }

    #[test]
    fn parses_and_evaluates() {
        assert!(eq("2\\frac{1}{2}", "5/2"));
        assert!(eq("-2\\frac12", "-2.5"));
        assert!(eq("2\\frac{x}{2}", "x"));
        assert!(eq("2^{6}", "64"));
        assert!(eq("2^6", "64"));
        assert!(eq("2^{-1}", "0.5"));
        assert!(eq("2^10", "1024"));
        assert!(!eq("2", "2.0000001"));
        assert!(eq("0.3333333", "1/3"));
        assert!(eq("\\sqrt{4}", "2"));
        assert!(eq("\\sqrt[3]{8}", "2"));
        assert!(eq("{{-12}}", "-12"));
        assert!(eq("2\\sqrt{3}", "\\sqrt{12}"));
        assert!(eq("\\frac{\\pi}{2}", "\\pi/2"));
        assert!(eq("x+1", "1+x"));
        assert!(eq("(x+1)^2", "x^2+2x+1"));
        assert!(!eq("\\sqrt{x^2}", "x"));
        assert!(eq("\\sqrt{x}\\sqrt{x}", "x"));
        assert!(eq("\\pi r^2", "r^2\\pi"));
        assert!(!eq("x+1", "y+1"));
        assert!(eq("7!", "5040"));
        assert!(eq("3!!", "720"));
        assert!(eq("40!", "40!"));
        assert!(!eq("2\\sqrt{3}", "\\sqrt{13}"));
        assert!(!eq("1/0", "0"));
        assert!(eq("123456789012345678901234567", "123456789012345678901234567"));
        assert!(!eq("123456789012345678901234567", "123456789012345678901234568"));
    }

    #[test]
    fn bounded_on_hostile_input() {
        assert!(parse(&"(".repeat(10_000)).is_none());
        assert!(parse(&format!("{}1{}", "(".repeat(200), ")".repeat(200))).is_none());
        // a tower of powers evaluates in bounded time (f64 saturates to infinity)
        let e = parse("9^{9^{9^{9^{9}}}}").unwrap();
        let _ = eval(&e, &[]);
        // past f64's range: no value (not +∞)
        let e = parse("(10^{30})^{256}").unwrap();
        assert_eq!(eval(&e, &[]), None);
        assert!(parse("x_").is_none());
        assert!(parse("\\frac{1}").is_none());
    }

    /// Finding 1.3: numbers below 1 are not compared with an absolute tolerance.
    #[test]
    fn small_numbers_compare_relatively() {
        assert!(!eq("10^{-8}", "2\\cdot10^{-8}"));
        assert!(!eq("0.0000001", "0.0000003"));
        assert!(!eq("1.6\\times10^{-19}", "9.1\\times10^{-31}"));
        assert!(eq("10^{-8}", "0.00000001"));
        assert!(eq("1.6\\times10^{-19}", "0.00000000000000000016"));
        // floats (\pi, roots) and variables: relative tolerance, zero equals only zero
        assert!(!eq("10^{-8}\\pi", "2\\cdot10^{-8}\\pi"));
        assert!(eq("\\sqrt{2}\\cdot10^{-9}", "1.4142136\\cdot10^{-9}"));
        assert!(!eq("\\sqrt{2}\\cdot10^{-9}", "0"));
        assert!(!eq("10^{-8}x", "2\\cdot10^{-8}x"));
        assert!(eq("\\sqrt{3}", "1.7320508"));
        assert!(!eq("\\pi", "3.14159"));
    }

    /// A finite decimal stands for a rational only when it is that rational rounded to at
    /// least 6 places (math-verify's labels: `0.3333333` = 1/3, `0.33` ≠ 1/3, `0.166` ≠ 1/6).
    #[test]
    fn rounded_decimals_of_rationals() {
        assert!(eq("0.333333", "1/3"));
        assert!(eq("0.6666667", "\\frac{2}{3}"));
        assert!(eq("\\frac{2}{9}", "0.2222222"));
        assert!(eq("12.333333", "37/3"));
        assert!(!eq("0.33", "1/3"));
        assert!(!eq("0.33333", "1/3"));
        assert!(!eq("0.166", "1/6"));
        assert!(!eq("0.666666", "2/3"));
        assert!(!eq("0.3333334", "1/3"));
        // two finite decimals, or two rationals, compare exactly
        assert!(!eq("0.3333333", "0.3333334"));
        assert!(!eq("1/3", "333333/1000001"));
        assert!(!eq("2", "2.0000001"));
        assert!(eq("0.125", "1/8"));
    }

    /// Finding 1.4: overflow gives no value; only a literal `\infty` is infinite.
    #[test]
    fn overflow_is_not_infinity() {
        assert!(!eq("10^{400}", "\\infty"));
        assert!(!eq("200!", "300!"));
        assert!(!eq("171!", "\\infty"));
        assert!(!eq("2^{2000}", "3^{2000}"));
        assert!(!eq("10^{-400}", "0"));
        assert!(!eq("10^{300}\\cdot10^{300}", "\\infty"));
        for s in ["10^{400}", "200!", "10^{-400}", "2^{2000}"] {
            assert_eq!(eval(&parse(s).unwrap(), &[]), None, "{s}");
        }
        assert!(eq("170!", "170!"));
        assert!(eq("\\infty", "\\infty"));
        assert!(!eq("\\infty", "-\\infty"));
        assert!(eq("\\infty+1", "\\infty"));
    }
}
