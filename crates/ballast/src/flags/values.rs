//! Flag values, parsed the way etcd (Go's `flag` and `strconv` packages, etcd's `pkg/flags` and
//! `pkg/types`) parses them, so that a value etcd accepts is accepted here and a value etcd rejects
//! is rejected with a message an etcd operator recognises.
//!
//! Error strings returned by the `parse_*` functions are the *reason* part of Go's flag error
//! (`invalid value "x" for flag -y: <reason>`): Go's terse `parse error` / `value out of range`,
//! followed by a hint of what was expected.

use std::fmt;
use std::net::IpAddr;

use super::table::{Kind, FEATURE_GATES};

/// A parsed flag value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Bool(bool),
    Str(String),
    Uint(u64),
    Int(i64),
    /// Nanoseconds, like Go's `time.Duration`.
    Duration(i64),
    /// Sorted and de-duplicated, like etcd's `UniqueURLs`.
    Urls(Vec<Url>),
    /// A comma-separated list (order kept; etcd's `StringsValue`).
    Strings(Vec<String>),
    /// `--feature-gates`: gate name -> enabled, in the order given.
    Gates(Vec<(String, bool)>),
}

impl Value {
    pub fn as_bool(&self) -> bool {
        matches!(self, Value::Bool(true))
    }

    pub fn as_str(&self) -> &str {
        match self {
            Value::Str(s) => s,
            _ => "",
        }
    }

    pub fn as_u64(&self) -> u64 {
        match self {
            Value::Uint(v) => *v,
            _ => 0,
        }
    }

    pub fn as_i64(&self) -> i64 {
        match self {
            Value::Int(v) => *v,
            _ => 0,
        }
    }

    pub fn as_duration_nanos(&self) -> i64 {
        match self {
            Value::Duration(v) => *v,
            _ => 0,
        }
    }

    pub fn as_urls(&self) -> &[Url] {
        match self {
            Value::Urls(v) => v,
            _ => &[],
        }
    }

    pub fn as_strings(&self) -> &[String] {
        match self {
            Value::Strings(v) => v,
            _ => &[],
        }
    }

    pub fn as_gates(&self) -> &[(String, bool)] {
        match self {
            Value::Gates(v) => v,
            _ => &[],
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Bool(b) => write!(f, "{b}"),
            Value::Str(s) => f.write_str(s),
            Value::Uint(v) => write!(f, "{v}"),
            Value::Int(v) => write!(f, "{v}"),
            Value::Duration(ns) => f.write_str(&format_go_duration(*ns)),
            Value::Urls(us) => {
                let all: Vec<String> = us.iter().map(Url::to_string).collect();
                f.write_str(&all.join(","))
            }
            Value::Strings(ss) => f.write_str(&ss.join(",")),
            Value::Gates(gs) => {
                let all: Vec<String> = gs.iter().map(|(k, v)| format!("{k}={v}")).collect();
                f.write_str(&all.join(","))
            }
        }
    }
}

/// Parses `text` as a value of `kind`, the way etcd's command line (and `ETCD_*` env vars) would.
pub fn parse(kind: &Kind, text: &str) -> Result<Value, String> {
    match kind {
        // etcd's IgnoredFlag accepts (and discards) any value.
        Kind::Ignored => Ok(Value::Bool(true)),
        Kind::Bool => parse_bool(text)
            .map(Value::Bool)
            .map_err(|e| format!("{e} (want true or false)")),
        Kind::Str => Ok(Value::Str(text.to_string())),
        Kind::Choice(valids) => {
            if valids.contains(&text) {
                Ok(Value::Str(text.to_string()))
            } else {
                let quoted: Vec<String> = valids.iter().map(|v| format!("{v:?}")).collect();
                Err(format!(
                    "invalid value (valid values: {})",
                    quoted.join(", ")
                ))
            }
        }
        Kind::Uint => parse_uint(text, 64)
            .map(Value::Uint)
            .map_err(|e| format!("{e} (want an unsigned integer)")),
        Kind::Uint32 => parse_uint(text, 32)
            .map(Value::Uint)
            .map_err(|e| format!("{e} (want an unsigned 32-bit integer)")),
        Kind::Int => parse_int(text)
            .map(Value::Int)
            .map_err(|e| format!("{e} (want an integer)")),
        Kind::Duration => parse_flag_duration(text).map(Value::Duration).map_err(|_| {
            "parse error (want a duration such as 500ms, 5s, 10m or 2h, or whole seconds)"
                .to_string()
        }),
        Kind::Urls => parse_urls(text).map(Value::Urls),
        Kind::Strings => Ok(Value::Strings(split_list(text, false))),
        Kind::UniqueStrings => Ok(Value::Strings(split_list(text, true))),
        Kind::FeatureGates => parse_feature_gates(text).map(Value::Gates),
    }
}

/// Splits a comma-separated list, trimming items and dropping empty ones; `unique` sorts and
/// de-duplicates like etcd's `UniqueStringsValue`.
pub fn split_list(text: &str, unique: bool) -> Vec<String> {
    let mut items: Vec<String> = text
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    if unique {
        items.sort();
        items.dedup();
    }
    items
}

/// Go's `strconv.ParseBool`.
pub fn parse_bool(s: &str) -> Result<bool, &'static str> {
    match s {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err("parse error"),
    }
}

/// Go's `strconv.ParseUint(s, 0, bits)`: base prefixes `0x`, `0o`, `0b`, a leading `0` for
/// octal, and `_` digit separators.
pub fn parse_uint(s: &str, bits: u32) -> Result<u64, &'static str> {
    if s.is_empty() {
        return Err("parse error");
    }
    let lower = s.to_ascii_lowercase();
    let (base, digits, prefixed) = if let Some(rest) = lower.strip_prefix("0x") {
        (16, rest, true)
    } else if let Some(rest) = lower.strip_prefix("0o") {
        (8, rest, true)
    } else if let Some(rest) = lower.strip_prefix("0b") {
        (2, rest, true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, &lower[1..], true)
    } else {
        (10, lower.as_str(), false)
    };
    if !underscores_ok(digits, prefixed) {
        return Err("parse error");
    }
    let digits: String = digits.chars().filter(|c| *c != '_').collect();
    if digits.is_empty() {
        return Err("parse error");
    }
    let mut v: u64 = 0;
    let max: u64 = if bits >= 64 {
        u64::MAX
    } else {
        (1u64 << bits) - 1
    };
    let mut overflow = false;
    for c in digits.chars() {
        let d = c.to_digit(base).ok_or("parse error")? as u64;
        match v.checked_mul(base as u64).and_then(|x| x.checked_add(d)) {
            Some(nv) if nv <= max => v = nv,
            _ => overflow = true,
        }
    }
    if overflow {
        return Err("value out of range");
    }
    Ok(v)
}

/// Go's underscore rule (simplified): `_` only between digits, or right after a base prefix.
fn underscores_ok(digits: &str, prefixed: bool) -> bool {
    if !digits.contains('_') {
        return true;
    }
    let bytes = digits.as_bytes();
    let mut prev_digit = prefixed;
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'_' {
            if !prev_digit {
                return false;
            }
            prev_digit = false;
        } else {
            prev_digit = true;
        }
        if i == bytes.len() - 1 && *b == b'_' {
            return false;
        }
    }
    true
}

/// Go's `strconv.ParseInt(s, 0, 64)`.
pub fn parse_int(s: &str) -> Result<i64, &'static str> {
    let (neg, rest) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mag = parse_uint(rest, 64)?;
    if neg {
        if mag > (i64::MAX as u64) + 1 {
            return Err("value out of range");
        }
        Ok((mag as i64).wrapping_neg())
    } else {
        i64::try_from(mag).map_err(|_| "value out of range")
    }
}

/// A duration flag value: Go's `time.ParseDuration` syntax, or (as newer etcd releases accept) a
/// bare integer meaning whole seconds.
pub fn parse_flag_duration(s: &str) -> Result<i64, String> {
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        let secs: i64 = s
            .parse()
            .map_err(|_| format!("time: invalid duration {s:?}"))?;
        return secs
            .checked_mul(1_000_000_000)
            .ok_or_else(|| format!("time: invalid duration {s:?}"));
    }
    parse_go_duration(s)
}

/// Go's `time.ParseDuration`, in nanoseconds.
pub fn parse_go_duration(orig: &str) -> Result<i64, String> {
    let invalid = || format!("time: invalid duration {orig:?}");
    let mut s = orig;
    let mut neg = false;
    if let Some(c) = s.chars().next() {
        if c == '-' || c == '+' {
            neg = c == '-';
            s = &s[1..];
        }
    }
    if s == "0" {
        return Ok(0);
    }
    if s.is_empty() {
        return Err(invalid());
    }
    let mut total: u128 = 0;
    while !s.is_empty() {
        let b = s.as_bytes()[0];
        if !(b == b'.' || b.is_ascii_digit()) {
            return Err(invalid());
        }
        // integer part
        let int_len = s.bytes().take_while(u8::is_ascii_digit).count();
        let int_part = &s[..int_len];
        s = &s[int_len..];
        let mut frac_part = "";
        if let Some(rest) = s.strip_prefix('.') {
            let frac_len = rest.bytes().take_while(u8::is_ascii_digit).count();
            frac_part = &rest[..frac_len];
            s = &rest[frac_len..];
            if int_part.is_empty() && frac_part.is_empty() {
                return Err(invalid());
            }
        } else if int_part.is_empty() {
            return Err(invalid());
        }
        let unit_len = s
            .bytes()
            .take_while(|b| *b != b'.' && !b.is_ascii_digit())
            .count();
        let unit = &s[..unit_len];
        s = &s[unit_len..];
        if unit.is_empty() {
            return Err(format!("time: missing unit in duration {orig:?}"));
        }
        let unit_ns: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3600 * 1_000_000_000,
            _ => return Err(format!("time: unknown unit {unit:?} in duration {orig:?}")),
        };
        let int_val: u128 = if int_part.is_empty() {
            0
        } else {
            int_part.parse().map_err(|_| invalid())?
        };
        let mut v = int_val.checked_mul(unit_ns).ok_or_else(invalid)?;
        if !frac_part.is_empty() {
            // Keep at most 30 fractional digits; more cannot change a nanosecond count.
            let frac = &frac_part[..frac_part.len().min(30)];
            let f: u128 = frac.parse().map_err(|_| invalid())?;
            let scale = 10u128.pow(frac.len() as u32);
            v += f * unit_ns / scale;
        }
        total = total.checked_add(v).ok_or_else(invalid)?;
        if total > (i64::MAX as u128) + u128::from(neg) {
            return Err(invalid());
        }
    }
    if neg {
        Ok((total as i64).wrapping_neg())
    } else {
        Ok(total as i64)
    }
}

/// Formats nanoseconds like Go's `time.Duration.String` (e.g. `1m30s`, `100ms`, `0s`).
pub fn format_go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let neg = ns < 0;
    let u = ns.unsigned_abs();
    let sign = if neg { "-" } else { "" };
    if u < 1_000_000_000 {
        let (unit, div) = if u < 1_000 {
            ("ns", 1)
        } else if u < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{sign}{}{unit}", trim_fraction(u, div));
    }
    let secs_total = u / 1_000_000_000;
    let h = secs_total / 3600;
    let m = (secs_total % 3600) / 60;
    let s_ns = u % 60_000_000_000;
    let mut out = String::from(sign);
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if h > 0 || m > 0 {
        out.push_str(&format!("{m}m"));
    }
    out.push_str(&format!("{}s", trim_fraction(s_ns, 1_000_000_000)));
    out
}

fn trim_fraction(v: u64, div: u64) -> String {
    let whole = v / div;
    let frac = v % div;
    if frac == 0 {
        return whole.to_string();
    }
    let width = div.to_string().len() - 1;
    let frac = format!("{frac:0width$}");
    format!("{whole}.{}", frac.trim_end_matches('0'))
}

/// A URL the way etcd accepts it (`pkg/types.NewURLs`): `scheme://host:port`, no path.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Url {
    /// Lower-cased: `http`, `https`, `unix` or `unixs`.
    pub scheme: String,
    /// As written, with brackets for IPv6 literals (`[::1]`).
    pub host: String,
    pub port: String,
}

impl Url {
    /// The host without IPv6 brackets.
    pub fn hostname(&self) -> &str {
        self.host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(&self.host)
    }

    /// True for an IP literal or `localhost` (etcd's `checkBindURLs` rule for listen URLs).
    pub fn is_bindable(&self) -> bool {
        self.hostname() == "localhost" || self.hostname().parse::<IpAddr>().is_ok()
    }
}

impl fmt::Display for Url {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}:{}", self.scheme, self.host, self.port)
    }
}

/// etcd's `types.NewURLs(strings.Split(s, ","))`, then sorted and de-duplicated. The empty string
/// is an empty list (etcd's URL flags accept "" and keep their previous value).
pub fn parse_urls(s: &str) -> Result<Vec<Url>, String> {
    if s.is_empty() {
        return Ok(Vec::new());
    }
    let mut all = Vec::new();
    for part in s.split(',') {
        all.push(parse_url(part.trim())?);
    }
    all.sort_by_key(Url::to_string);
    all.dedup();
    Ok(all)
}

/// One URL with etcd's checks and error messages.
pub fn parse_url(s: &str) -> Result<Url, String> {
    let scheme_err = || format!("URL scheme must be http, https, unix, or unixs: {s}");
    let hostport_err = || format!("URL address does not have the form \"host:port\": {s}");
    let colon = s.find(':').ok_or_else(scheme_err)?;
    let scheme = s[..colon].to_ascii_lowercase();
    if !matches!(scheme.as_str(), "http" | "https" | "unix" | "unixs") {
        return Err(scheme_err());
    }
    let rest = s[colon + 1..].strip_prefix("//").ok_or_else(hostport_err)?;
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(end);
    if !tail.is_empty() {
        return Err(format!("URL must not contain a path: {s}"));
    }
    // Drop userinfo like Go's url.Parse does; etcd ignores it.
    let hostport = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let (host, port) = if hostport.starts_with('[') {
        let close = hostport.find(']').ok_or_else(hostport_err)?;
        let host = &hostport[..=close];
        let port = hostport[close + 1..]
            .strip_prefix(':')
            .ok_or_else(hostport_err)?;
        (host, port)
    } else {
        let (host, port) = hostport.rsplit_once(':').ok_or_else(hostport_err)?;
        if host.contains(':') {
            return Err(hostport_err());
        }
        (host, port)
    };
    let port_ok = !port.is_empty()
        && port.len() <= 5
        && port.bytes().all(|b| b.is_ascii_digit())
        && port.parse::<u32>().is_ok_and(|p| p <= 65535);
    if !port_ok {
        return Err(hostport_err());
    }
    Ok(Url {
        scheme,
        host: host.to_string(),
        port: port.to_string(),
    })
}

/// `--feature-gates=Name=bool,Name=bool` (etcd's copy of Kubernetes' featuregate `Set`).
pub fn parse_feature_gates(s: &str) -> Result<Vec<(String, bool)>, String> {
    let mut out: Vec<(String, bool)> = Vec::new();
    for item in s.split(',') {
        let item = item.trim();
        if item.is_empty() {
            continue;
        }
        let (k, v) = match item.split_once('=') {
            Some((k, v)) => (k.trim(), v.trim()),
            None => return Err(format!("missing bool value for {item}")),
        };
        let enabled = parse_bool(v).map_err(|_| {
            format!(
                "invalid value of {k}={v}, err: strconv.ParseBool: parsing {v:?}: invalid syntax"
            )
        })?;
        if !FEATURE_GATES.iter().any(|g| g.name == k) {
            return Err(format!("unrecognized feature gate: {k}"));
        }
        out.retain(|(name, _)| name != k);
        out.push((k.to_string(), enabled));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_bools() {
        for t in ["1", "t", "T", "TRUE", "true", "True"] {
            assert_eq!(parse_bool(t), Ok(true));
        }
        for f in ["0", "f", "F", "FALSE", "false", "False"] {
            assert_eq!(parse_bool(f), Ok(false));
        }
        assert!(parse_bool("yes").is_err());
        assert!(parse_bool("").is_err());
    }

    #[test]
    fn go_uints() {
        assert_eq!(parse_uint("10000", 64), Ok(10000));
        assert_eq!(parse_uint("0x10", 64), Ok(16));
        assert_eq!(parse_uint("010", 64), Ok(8));
        assert_eq!(parse_uint("0b101", 64), Ok(5));
        assert_eq!(parse_uint("1_000", 64), Ok(1000));
        assert_eq!(parse_uint("0", 64), Ok(0));
        assert_eq!(parse_uint("abc", 64), Err("parse error"));
        assert_eq!(parse_uint("-1", 64), Err("parse error"));
        assert_eq!(parse_uint("", 64), Err("parse error"));
        assert_eq!(parse_uint("_1", 64), Err("parse error"));
        assert_eq!(parse_uint("1_", 64), Err("parse error"));
        assert_eq!(parse_uint("4294967296", 32), Err("value out of range"));
        assert_eq!(parse_uint("4294967295", 32), Ok(u32::MAX as u64));
        assert_eq!(
            parse_uint("18446744073709551616", 64),
            Err("value out of range")
        );
    }

    #[test]
    fn go_ints() {
        assert_eq!(parse_int("-1"), Ok(-1));
        assert_eq!(parse_int("+7"), Ok(7));
        assert_eq!(parse_int("-9223372036854775808"), Ok(i64::MIN));
        assert_eq!(parse_int("9223372036854775808"), Err("value out of range"));
        assert_eq!(parse_int("x"), Err("parse error"));
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(parse_go_duration("5s"), Ok(5_000_000_000));
        assert_eq!(parse_go_duration("1m30s"), Ok(90_000_000_000));
        assert_eq!(parse_go_duration("1.5h"), Ok(5_400_000_000_000));
        assert_eq!(parse_go_duration("100ms"), Ok(100_000_000));
        assert_eq!(parse_go_duration("-2us"), Ok(-2_000));
        assert_eq!(parse_go_duration(".5s"), Ok(500_000_000));
        assert_eq!(
            parse_go_duration("5"),
            Err("time: missing unit in duration \"5\"".into())
        );
        assert_eq!(
            parse_go_duration("5x"),
            Err("time: unknown unit \"x\" in duration \"5x\"".into())
        );
        assert!(parse_go_duration("").is_err());
        assert!(parse_go_duration("s").is_err());
        assert!(parse_go_duration(".s").is_err());
        assert!(parse_go_duration("99999999999h").is_err());
        // Flag form: bare integers are seconds.
        assert_eq!(parse_flag_duration("88"), Ok(88_000_000_000));
        assert_eq!(parse_flag_duration("2h"), Ok(7_200_000_000_000));
    }

    #[test]
    fn go_duration_strings() {
        assert_eq!(format_go_duration(0), "0s");
        assert_eq!(format_go_duration(100_000_000), "100ms");
        assert_eq!(format_go_duration(90_000_000_000), "1m30s");
        assert_eq!(format_go_duration(7_200_000_000_000), "2h0m0s");
        assert_eq!(format_go_duration(1_500_000_000), "1.5s");
        assert_eq!(format_go_duration(-5_000), "-5µs");
    }

    #[test]
    fn urls() {
        let u = parse_url("http://127.0.0.1:2379").unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:2379");
        assert!(u.is_bindable());
        let u = parse_url("HTTP://[::1]:2380").unwrap();
        assert_eq!(u.to_string(), "http://[::1]:2380");
        assert_eq!(u.hostname(), "::1");
        assert!(u.is_bindable());
        assert!(!parse_url("http://example.com:1").unwrap().is_bindable());
        assert!(parse_url("http://localhost:1").unwrap().is_bindable());
        assert_eq!(
            parse_url("localhost:2379").unwrap_err(),
            "URL scheme must be http, https, unix, or unixs: localhost:2379"
        );
        assert_eq!(
            parse_url("ftp://a:1").unwrap_err(),
            "URL scheme must be http, https, unix, or unixs: ftp://a:1"
        );
        assert_eq!(
            parse_url("http://a").unwrap_err(),
            "URL address does not have the form \"host:port\": http://a"
        );
        assert_eq!(
            parse_url("http://a:1/x").unwrap_err(),
            "URL must not contain a path: http://a:1/x"
        );
        assert!(parse_url("http://a:99999").is_err());
        assert!(parse_url("http://::1:2379").is_err());
        assert!(parse_url("").is_err());
        let list = parse_urls("http://b:1, http://a:1,http://b:1").unwrap();
        let shown: Vec<String> = list.iter().map(Url::to_string).collect();
        assert_eq!(shown, ["http://a:1", "http://b:1"]);
    }

    #[test]
    fn feature_gates() {
        assert_eq!(
            parse_feature_gates("InitialCorruptCheck=true, CompactHashCheck=false").unwrap(),
            vec![
                ("InitialCorruptCheck".to_string(), true),
                ("CompactHashCheck".to_string(), false)
            ]
        );
        assert_eq!(parse_feature_gates("").unwrap(), vec![]);
        assert_eq!(
            parse_feature_gates("Nope=true").unwrap_err(),
            "unrecognized feature gate: Nope"
        );
        assert_eq!(
            parse_feature_gates("InitialCorruptCheck").unwrap_err(),
            "missing bool value for InitialCorruptCheck"
        );
        assert!(parse_feature_gates("InitialCorruptCheck=maybe").is_err());
    }
}
