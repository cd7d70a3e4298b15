//! `--config-file`: etcd's YAML configuration (the json tags of etcd's `embed.Config`, read through
//! `sigs.k8s.io/yaml`), mapped onto the same flag table as the command line.
//!
//! Like etcd, decoding is lenient about keys: unknown keys are ignored (Ballast warns about them),
//! keys match case-insensitively (Go's `encoding/json` does), and `null` leaves the default. Values
//! follow etcd's types, with a few harmless extensions noted per kind in [`convert`]:
//! durations are integer **nanoseconds** as in etcd (strings like `"5s"` are accepted too), URL
//! lists are comma-separated strings (sequences are accepted too), and scalars are stringified
//! for string keys (`name: 123` is the name "123", as in etcd).

use serde_norway::Value as Yv;

use super::table::{lookup, FlagSpec, Kind, Yaml, FLAGS};
use super::values::{self, parse_feature_gates, parse_urls, Value};
use super::{Notice, SetValue, DISCOVERY_CONFIG_REASON};

/// Nested mappings etcd reads (`embed.configJSON` / `transport.SocketOpts`).
const SECTIONS: &[&str] = &[
    "client-transport-security",
    "peer-transport-security",
    "socket-options",
];

/// What a config file yields: the settings, plus notices and errors to report.
#[derive(Debug, Default)]
pub struct FromFile {
    pub settings: Vec<SetValue>,
    pub notices: Vec<Notice>,
    pub errors: Vec<String>,
}

/// Parses the YAML text of a config file named `path` (for messages).
pub fn parse_config(text: &str, path: &str) -> Result<FromFile, String> {
    let doc: Yv = serde_norway::from_str(text)
        .map_err(|e| format!("cannot parse config file {path}: {e}"))?;
    let mut out = FromFile::default();
    let map = match doc {
        Yv::Null => return Ok(out),
        Yv::Mapping(m) => m,
        _ => {
            return Err(format!(
                "config file {path}: expected a mapping of etcd configuration keys at the top level"
            ))
        }
    };
    for (k, v) in map {
        let Some(key) = k.as_str() else {
            out.errors.push(format!(
                "config file {path}: configuration keys must be strings"
            ));
            continue;
        };
        if v.is_null() {
            continue;
        }
        if let Some(section) = SECTIONS.iter().find(|s| s.eq_ignore_ascii_case(key)) {
            read_section(section, &v, path, &mut out);
            continue;
        }
        if key.eq_ignore_ascii_case("discovery-config") {
            if has_content(&v) {
                out.errors.push(format!(
                    "config key discovery-config is not supported yet by Ballast: {DISCOVERY_CONFIG_REASON} (set in config file {path})"
                ));
            }
            continue;
        }
        let spec = FLAGS
            .iter()
            .find(|f| f.yaml == Yaml::Same && f.name == key)
            .or_else(|| {
                FLAGS
                    .iter()
                    .find(|f| f.yaml == Yaml::Same && f.name.eq_ignore_ascii_case(key))
            });
        match spec {
            Some(spec) => push(spec, key, &v, path, &mut out),
            None => out.notices.push(unknown_key(key, path)),
        }
    }
    Ok(out)
}

fn read_section(section: &str, v: &Yv, path: &str, out: &mut FromFile) {
    let Yv::Mapping(m) = v else {
        out.errors
            .push(format!("config file {path}: {section} must be a mapping"));
        return;
    };
    for (k, sv) in m {
        let Some(sub) = k.as_str() else {
            out.errors.push(format!(
                "config file {path}: configuration keys must be strings"
            ));
            continue;
        };
        if sv.is_null() {
            continue;
        }
        let spec = FLAGS.iter().find(|f| match f.yaml {
            Yaml::Nested(s, key) => s == section && key.eq_ignore_ascii_case(sub),
            _ => false,
        });
        let full = format!("{section}.{sub}");
        match spec {
            Some(spec) => push(spec, &full, sv, path, out),
            None => out.notices.push(
                Notice::warn("unrecognized configuration key in config file; ignored")
                    .key(&full)
                    .file(path),
            ),
        }
    }
}

fn unknown_key(key: &str, path: &str) -> Notice {
    let msg = match lookup(key).map(|spec| spec.yaml) {
        Some(Yaml::Nested(section, sub)) => format!(
            "configuration key is ignored: etcd reads it as {section}.{sub} in a config file"
        ),
        Some(_) => "configuration key is a command-line flag only (etcd does not read it from a config file); ignored".to_string(),
        None => "unrecognized configuration key in config file; ignored".to_string(),
    };
    Notice::warn(&msg).key(key).file(path)
}

fn push(spec: &'static FlagSpec, key: &str, v: &Yv, path: &str, out: &mut FromFile) {
    match convert(spec, v) {
        Ok(Some(value)) => out.settings.push(SetValue {
            spec,
            raw: display(v),
            value,
        }),
        Ok(None) => {}
        Err(reason) => out.errors.push(format!(
            "config file {path}: invalid value {} for {key}: {reason}",
            quoted(v)
        )),
    }
}

fn has_content(v: &Yv) -> bool {
    match v {
        Yv::Null => false,
        Yv::Mapping(m) => m.values().any(has_content),
        Yv::Sequence(s) => s.iter().any(has_content),
        Yv::String(s) => !s.is_empty(),
        _ => true,
    }
}

/// Converts a YAML value for `spec`. `Ok(None)` keeps the default (e.g. an empty
/// `initial-cluster-state`, which etcd treats as "new").
pub fn convert(spec: &FlagSpec, v: &Yv) -> Result<Option<Value>, String> {
    let v = untag(v);
    let value = match spec.kind {
        Kind::Bool | Kind::Ignored => Value::Bool(yaml_bool(v)?),
        Kind::Str => Value::Str(scalar(v)?),
        Kind::Choice(_) => {
            let s = scalar(v)?;
            if s.is_empty() {
                return Ok(None);
            }
            values::parse(&spec.kind, &s)?
        }
        Kind::Uint | Kind::Uint32 | Kind::Int => match v {
            Yv::Number(n) => {
                let text = n.to_string();
                values::parse(&spec.kind, &text)
                    .map_err(|_| format!("want {}", number_name(&spec.kind)))?
            }
            Yv::String(s) => values::parse(&spec.kind, s.trim())?,
            _ => return Err(format!("want {}", number_name(&spec.kind))),
        },
        Kind::Duration => match v {
            Yv::Number(n) => match n.as_i64() {
                Some(ns) => Value::Duration(ns),
                None => return Err("want an integer number of nanoseconds".into()),
            },
            Yv::String(s) => Value::Duration(values::parse_flag_duration(s.trim())?),
            _ => {
                return Err("want a duration (integer nanoseconds, or a string like \"5s\")".into())
            }
        },
        Kind::Urls => {
            let text = list_text(v)?;
            if text.is_empty() {
                return Ok(None);
            }
            Value::Urls(parse_urls(&text)?)
        }
        Kind::Strings => Value::Strings(values::split_list(&list_text(v)?, false)),
        Kind::UniqueStrings => Value::Strings(values::split_list(&list_text(v)?, true)),
        Kind::FeatureGates => match v {
            Yv::Mapping(m) => {
                let mut items = Vec::new();
                for (k, b) in m {
                    let k = k.as_str().ok_or("feature gate names must be strings")?;
                    items.push(format!("{k}={}", yaml_bool(untag(b))?));
                }
                Value::Gates(parse_feature_gates(&items.join(","))?)
            }
            _ => Value::Gates(parse_feature_gates(&scalar(v)?)?),
        },
    };
    Ok(Some(value))
}

fn untag(v: &Yv) -> &Yv {
    match v {
        Yv::Tagged(t) => untag(&t.value),
        other => other,
    }
}

/// YAML 1.1 booleans (etcd's YAML library is YAML 1.1: `yes`/`no`/`on`/`off` are booleans).
fn yaml_bool(v: &Yv) -> Result<bool, String> {
    match v {
        Yv::Bool(b) => Ok(*b),
        Yv::String(s) => match s.to_ascii_lowercase().as_str() {
            "true" | "yes" | "y" | "on" => Ok(true),
            "false" | "no" | "n" | "off" => Ok(false),
            _ => Err("want true or false".into()),
        },
        _ => Err("want true or false".into()),
    }
}

fn scalar(v: &Yv) -> Result<String, String> {
    match v {
        Yv::String(s) => Ok(s.clone()),
        Yv::Number(n) => Ok(n.to_string()),
        Yv::Bool(b) => Ok(b.to_string()),
        _ => Err("want a string".into()),
    }
}

/// A comma-separated string, or a sequence of strings.
fn list_text(v: &Yv) -> Result<String, String> {
    match v {
        Yv::Sequence(items) => {
            let parts: Result<Vec<String>, String> =
                items.iter().map(|i| scalar(untag(i))).collect();
            Ok(parts?.join(","))
        }
        other => scalar(other).map_err(|_| "want a comma-separated string or a list".into()),
    }
}

fn number_name(kind: &Kind) -> &'static str {
    match kind {
        Kind::Int => "an integer",
        Kind::Uint32 => "an unsigned 32-bit integer",
        _ => "an unsigned integer",
    }
}

fn display(v: &Yv) -> String {
    match untag(v) {
        Yv::String(s) => s.clone(),
        Yv::Number(n) => n.to_string(),
        Yv::Bool(b) => b.to_string(),
        Yv::Sequence(items) => items.iter().map(display).collect::<Vec<_>>().join(","),
        Yv::Mapping(m) => m
            .iter()
            .map(|(k, v)| format!("{}={}", display(k), display(v)))
            .collect::<Vec<_>>()
            .join(","),
        Yv::Null => String::new(),
        Yv::Tagged(_) => unreachable!("untagged above"),
    }
}

fn quoted(v: &Yv) -> String {
    format!("{:?}", display(v))
}
