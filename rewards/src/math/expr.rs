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
//! `f64` otherwise (roots, `\pi`, non-integer powers, overflow). Two expressions with
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
/// Relative tolerance of numeric comparison (absolute below 1): a little under half a unit
/// in the 6th decimal, so `0.333333` = 1/3 but `2.000001` ≠ 2 (math-verify rounds to 6
/// decimals).
pub const TOLERANCE: f64 = 4e-7;

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
        Some(Num::F(self.f64().powf(e.f64())))
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

/// `n!` for a non-negative integer `n` (exact while it fits, then `f64`, `∞` past 170).
fn factorial(n: Num) -> Option<Num> {
    let Num::Q(n, 1) = n else { return None };
    if n < 0 {
        return None;
    }
    let mut acc = Num::int(1);
    for k in 2..=n.min(171) {
        acc = acc.mul(Num::int(k));
    }
    Some(if n > 170 { Num::F(f64::INFINITY) } else { acc })
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

/// Value of `e` with the variables bound in `env` (a variable not in `env` has no value).
pub fn eval(e: &Expr, env: &[(String, f64)]) -> Option<Num> {
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

/// Numeric equality: an exact integer and another exact value compare exactly (`2` ≠
/// `2.0000001`, as math-verify), anything else within [`TOLERANCE`] (`1/3` = `0.333333`);
/// equal infinities are equal, NaN equals nothing.
pub fn num_eq(a: Num, b: Num) -> bool {
    if let (Num::Q(x, d), Num::Q(y, e)) = (a, b) {
        if d == 1 || e == 1 {
            return x == y && d == e;
        }
    }
    let (x, y) = (a.f64(), b.f64());
    if x.is_infinite() || y.is_infinite() {
        return x == y;
    }
    (x - y).abs() <= TOLERANCE * x.abs().max(y.abs()).max(1.0)
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
        assert!(eq("0.3333334", "1/3"));
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
        let e = parse("(10^{30})^{256}").unwrap();
        assert!(matches!(eval(&e, &[]), Some(Num::F(_))));
        assert!(parse("x_").is_none());
        assert!(parse("\\frac{1}").is_none());
    }
}
