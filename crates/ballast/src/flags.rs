//! etcd-compatible configuration for the `ballast` binary: command-line flags, `ETCD_*`
//! environment variables and the `--config-file` YAML, resolved into
//! [`ballast_server::config::ServerConfig`] plus a [`LogConfig`].
//!
//! The rules are etcd's (3.5/3.6, `server/etcdmain/config.go`, `pkg/flags`):
//!
//! * Flags are parsed like Go's `flag` package: `-name` and `--name`, `--name=value` and
//!   `--name value`, booleans as `--flag` or `--flag=true|false` (a separate `--flag false` is a
//!   stray argument, as in Go), `--` ends the flags, the last occurrence wins. Syntax errors exit
//!   with status 2, like etcd; `-h`/`--help` prints the help.
//! * Each flag `--foo-bar` can also come from `ETCD_FOO_BAR` when not given on the command line.
//!   An `ETCD_*` variable for a flag that *is* given on the command line is an error ("conflicting
//!   environment variable ... is shadowed"); unrecognised `ETCD_*` variables are warned about.
//! * With `--config-file` (or `ETCD_CONFIG_FILE`), the YAML file is the whole configuration:
//!   other flags and env vars are ignored (with a warning naming them).
//! * Every etcd server flag is recognised; see [`table`] for what Ballast does with each.
//!
//! The result carries [`Notice`]s (warnings and infos) for the caller to log once logging is up.
//! This module does no I/O other than reading the config file.

mod help;
pub mod table;
pub mod values;
mod yaml;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use ballast_server::config::{
    ClusterState, InitialMember, ServerConfig, DEFAULT_EMULATED_ETCD_VERSION,
    DEFAULT_QUOTA_BACKEND_BYTES, DEFAULT_SNAPSHOT_COUNT, GRPC_DEFAULT_KEEPALIVE_MIN_TIME,
};

use crate::logging::{self, LogConfig};
use table::{lookup, Disposition, FlagSpec, Kind, FEATURE_GATES, FLAGS};
use values::{Url, Value};

pub use help::{help_text, version_text};

/// Prefix of the environment variables that mirror flags.
pub const ENV_PREFIX: &str = "ETCD";

/// etcd's default `--initial-cluster`, which it rewrites as `${name}=${initial-advertise-peer-urls}`
/// when only `--name` is given.
const DEFAULT_INITIAL_CLUSTER: &str = "default=http://localhost:2380";

/// etcd's suggested maximum backend quota (`MaxQuotaBytes`, 8 GiB): it warns above it.
const MAX_SUGGESTED_QUOTA_BYTES: u64 = 8 * 1024 * 1024 * 1024;

/// etcd's `maxElectionMs`.
const MAX_ELECTION_MS: u64 = 50_000;

pub(crate) const DISCOVERY_CONFIG_REASON: &str =
    "v3 discovery is not supported yet; bootstrap with initial-cluster";

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    /// Start the member.
    Run(Box<Resolved>),
    /// `-h` / `--help`: print [`help_text`] and exit 0.
    Help,
    /// `--version`: print [`version_text`] and exit 0.
    Version { emulated_etcd_version: String },
}

/// A fully resolved configuration.
#[derive(Debug)]
pub struct Resolved {
    pub server: ServerConfig,
    pub logging: LogConfig,
    /// To be logged once logging is set up, in order.
    pub notices: Vec<Notice>,
    /// The `--config-file` in use, if any.
    pub config_file: Option<PathBuf>,
}

/// Severity of a [`Notice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeLevel {
    Info,
    Warn,
}

/// A message about the configuration, with structured fields, logged after logging starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    pub level: NoticeLevel,
    pub msg: String,
    /// The flag concerned (without dashes).
    pub flag: Option<String>,
    /// The value as given.
    pub value: Option<String>,
    /// Where the value came from ("command line", "env ETCD_X", "config file f").
    pub source: Option<String>,
    /// An environment variable or config-file key.
    pub key: Option<String>,
    /// The config file concerned.
    pub file: Option<String>,
}

impl Notice {
    pub fn warn(msg: &str) -> Self {
        Notice::new(NoticeLevel::Warn, msg)
    }

    pub fn info(msg: &str) -> Self {
        Notice::new(NoticeLevel::Info, msg)
    }

    fn new(level: NoticeLevel, msg: &str) -> Self {
        Notice {
            level,
            msg: msg.to_string(),
            flag: None,
            value: None,
            source: None,
            key: None,
            file: None,
        }
    }

    pub fn flag(mut self, flag: &str) -> Self {
        self.flag = Some(flag.to_string());
        self
    }

    pub fn value(mut self, value: &str) -> Self {
        self.value = Some(value.to_string());
        self
    }

    fn source(mut self, source: &Source) -> Self {
        self.source = Some(source.short());
        self
    }

    pub fn key(mut self, key: &str) -> Self {
        self.key = Some(key.to_string());
        self
    }

    pub fn file(mut self, file: &str) -> Self {
        self.file = Some(file.to_string());
        self
    }
}

/// Why the configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigError {
    /// Command-line syntax (Go `flag` package errors): etcd exits with status 2.
    Usage(String),
    /// Anything else: etcd exits with status 1.
    Invalid(String),
}

impl ConfigError {
    /// The process exit status etcd uses for this kind of error.
    pub fn exit_code(&self) -> u8 {
        match self {
            ConfigError::Usage(_) => 2,
            ConfigError::Invalid(_) => 1,
        }
    }

    pub fn is_usage(&self) -> bool {
        matches!(self, ConfigError::Usage(_))
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Usage(m) | ConfigError::Invalid(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for ConfigError {}

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    CommandLine,
    Env(String),
    /// Path and key.
    ConfigFile(String, String),
}

impl Source {
    fn short(&self) -> String {
        match self {
            Source::CommandLine => "command line".into(),
            Source::Env(key) => format!("env {key}"),
            Source::ConfigFile(path, key) => format!("config file {path} ({key})"),
        }
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::CommandLine => f.write_str("on the command line"),
            Source::Env(key) => write!(f, "by environment variable {key}"),
            Source::ConfigFile(path, key) => write!(f, "in config file {path} as {key}"),
        }
    }
}

/// A value for one flag, before knowing its source (shared with the YAML reader).
#[derive(Debug, Clone)]
pub(crate) struct SetValue {
    pub spec: &'static FlagSpec,
    pub value: Value,
    /// The text as given, for messages.
    pub raw: String,
}

#[derive(Debug, Clone)]
struct Setting {
    spec: &'static FlagSpec,
    value: Value,
    raw: String,
    source: Source,
}

/// Explicitly set flags, by name; later settings replace earlier ones.
type Settings = BTreeMap<&'static str, Setting>;

/// The environment variable that mirrors flag `name` (etcd's `flags.FlagToEnv`).
pub fn env_key(name: &str) -> String {
    format!("{ENV_PREFIX}_{}", name.to_uppercase().replace('-', "_"))
}

/// Resolves the configuration from the command line (`args`, without the program name) and the
/// process environment (`env`).
pub fn parse(args: &[String], env: &[(String, String)]) -> Result<Command, ConfigError> {
    let Some(cmdline) = parse_command_line(args)? else {
        return Ok(Command::Help);
    };
    if let Some(arg) = cmdline.positional.first() {
        return Err(ConfigError::Invalid(format!("{arg:?} is not a valid flag")));
    }
    if cmdline
        .settings
        .get("version")
        .is_some_and(|s| s.value.as_bool())
    {
        let emulated = cmdline
            .settings
            .get("emulated-etcd-version")
            .map(|s| s.value.as_str().to_string())
            .filter(|v| check_emulated_version(v).is_ok())
            .unwrap_or_else(|| DEFAULT_EMULATED_ETCD_VERSION.to_string());
        return Ok(Command::Version {
            emulated_etcd_version: emulated,
        });
    }

    let CommandLine {
        settings: cmdline_settings,
        mut notices,
        ..
    } = cmdline;
    let mut config_file = cmdline_settings
        .get("config-file")
        .map(|s| s.value.as_str().to_string())
        .unwrap_or_default();
    if config_file.is_empty() {
        config_file = env_get(env, &env_key("config-file"))
            .unwrap_or_default()
            .to_string();
    }

    let settings = if config_file.is_empty() {
        let mut settings = cmdline_settings;
        apply_env(&mut settings, env, &mut notices)?;
        settings
    } else {
        let text = std::fs::read_to_string(&config_file).map_err(|e| {
            ConfigError::Invalid(format!("cannot read config file {config_file}: {e}"))
        })?;
        from_config_file(&text, &config_file, &cmdline_settings, env, &mut notices)?
    };
    let from_file = (!config_file.is_empty()).then_some(config_file);
    resolve(&settings, from_file, notices).map(|r| Command::Run(Box::new(r)))
}

struct CommandLine {
    settings: Settings,
    positional: Vec<String>,
    notices: Vec<Notice>,
}

/// Go's `flag.FlagSet.Parse`. `Ok(None)` means help was asked for.
fn parse_command_line(args: &[String]) -> Result<Option<CommandLine>, ConfigError> {
    let mut cl = CommandLine {
        settings: Settings::new(),
        positional: Vec::new(),
        notices: Vec::new(),
    };
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if arg.len() < 2 || !arg.starts_with('-') {
            break;
        }
        let minuses = if arg.as_bytes()[1] == b'-' {
            if arg.len() == 2 {
                i += 1; // "--" ends the flags
                break;
            }
            2
        } else {
            1
        };
        let body = &arg[minuses..];
        if body.is_empty() || body.starts_with('-') || body.starts_with('=') {
            return Err(ConfigError::Usage(format!("bad flag syntax: {arg}")));
        }
        i += 1;
        let (name, inline) = match body[1..].find('=') {
            Some(j) => (&body[..=j], Some(&body[j + 2..])),
            None => (body, None),
        };
        let Some(spec) = lookup(name) else {
            if name == "help" || name == "h" {
                return Ok(None);
            }
            return Err(ConfigError::Usage(format!(
                "flag provided but not defined: -{name}"
            )));
        };
        let text: &str = if spec.kind.is_bool() {
            let text = inline.unwrap_or("true");
            if spec.kind == Kind::Bool && values::parse_bool(text).is_err() {
                return Err(ConfigError::Usage(format!(
                    "invalid boolean value {text:?} for -{name}: parse error"
                )));
            }
            text
        } else if let Some(v) = inline {
            v
        } else if i < args.len() {
            i += 1;
            &args[i - 1]
        } else {
            return Err(ConfigError::Usage(format!(
                "flag needs an argument: -{name}"
            )));
        };
        let value = values::parse(&spec.kind, text).map_err(|reason| {
            ConfigError::Usage(format!("invalid value {text:?} for flag -{name}: {reason}"))
        })?;
        if spec.disposition == Disposition::Ignored {
            cl.notices.push(ignored_flag_notice(name));
        }
        cl.settings.insert(
            spec.name,
            Setting {
                spec,
                value,
                raw: text.to_string(),
                source: Source::CommandLine,
            },
        );
    }
    cl.positional = args[i..].to_vec();
    Ok(Some(cl))
}

fn ignored_flag_notice(name: &str) -> Notice {
    Notice::warn(&format!(
        "flag \"-{name}\" is no longer supported - ignoring."
    ))
    .flag(name)
}

fn env_get<'a>(env: &'a [(String, String)], key: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

/// Values of password flags / variables are not repeated in logs or errors.
fn redact(key: &str, value: &str) -> String {
    if key.to_ascii_lowercase().contains("password") {
        "<redacted>".into()
    } else {
        value.to_string()
    }
}

/// etcd's `flags.SetFlagsFromEnv` + `verifyEnv`.
fn apply_env(
    settings: &mut Settings,
    env: &[(String, String)],
    notices: &mut Vec<Notice>,
) -> Result<(), ConfigError> {
    let shadowed: HashSet<String> = settings.keys().map(|n| env_key(n)).collect();
    let version_key = env_key("version");
    let mut used = HashSet::new();
    for spec in FLAGS {
        let key = env_key(spec.name);
        if shadowed.contains(&key) || key == version_key {
            continue;
        }
        let Some(text) = env_get(env, &key).filter(|v| !v.is_empty()) else {
            continue;
        };
        used.insert(key.clone());
        let value = values::parse(&spec.kind, text).map_err(|reason| {
            ConfigError::Invalid(format!("invalid value {text:?} for {key}: {reason}"))
        })?;
        if spec.disposition == Disposition::Ignored {
            notices.push(ignored_flag_notice(spec.name));
        }
        notices.push(
            Notice::info("recognized and used environment variable")
                .key(&key)
                .value(&redact(&key, text)),
        );
        settings.insert(
            spec.name,
            Setting {
                spec,
                value,
                raw: text.to_string(),
                source: Source::Env(key),
            },
        );
    }
    for (k, v) in env {
        if used.contains(k) {
            continue;
        }
        if *k == version_key {
            notices.push(
                Notice::warn("cannot set special environment variable")
                    .key(k)
                    .value(v),
            );
            continue;
        }
        if shadowed.contains(k) {
            return Err(ConfigError::Invalid(format!(
                "conflicting environment variable {k:?} is shadowed by corresponding command-line flag (either unset environment variable or disable flag)"
            )));
        }
        if k.starts_with(&format!("{ENV_PREFIX}_")) {
            notices.push(
                Notice::warn("unrecognized environment variable")
                    .key(k)
                    .value(&redact(k, v)),
            );
        }
    }
    Ok(())
}

/// `--config-file`: the YAML is the whole configuration; flags and env vars are ignored.
fn from_config_file(
    text: &str,
    path: &str,
    cmdline: &Settings,
    env: &[(String, String)],
    notices: &mut Vec<Notice>,
) -> Result<Settings, ConfigError> {
    let parsed = yaml::parse_config(text, path).map_err(ConfigError::Invalid)?;
    if !parsed.errors.is_empty() {
        return Err(ConfigError::Invalid(parsed.errors.join("; ")));
    }
    notices.push(
        Notice::info(
            "loaded server configuration, other configuration command line flags and environment variables will be ignored if provided",
        )
        .file(path),
    );
    notices.extend(parsed.notices);
    let ignored_flags: Vec<String> = cmdline
        .keys()
        .filter(|n| **n != "config-file")
        .map(|n| format!("--{n}"))
        .collect();
    if !ignored_flags.is_empty() {
        notices.push(
            Notice::warn("command-line flags are ignored because a config file is given")
                .value(&ignored_flags.join(","))
                .file(path),
        );
    }
    let config_key = env_key("config-file");
    let ignored_env: Vec<&str> = env
        .iter()
        .map(|(k, _)| k.as_str())
        .filter(|k| k.starts_with(&format!("{ENV_PREFIX}_")) && *k != config_key)
        .collect();
    if !ignored_env.is_empty() {
        notices.push(
            Notice::warn("environment variables are ignored because a config file is given")
                .value(&ignored_env.join(","))
                .file(path),
        );
    }
    let mut settings = Settings::new();
    for sv in parsed.settings {
        let key = match sv.spec.yaml {
            table::Yaml::Nested(section, sub) => format!("{section}.{sub}"),
            _ => sv.spec.name.to_string(),
        };
        if sv.spec.disposition == Disposition::Ignored {
            notices.push(ignored_flag_notice(sv.spec.name));
        }
        settings.insert(
            sv.spec.name,
            Setting {
                spec: sv.spec,
                value: sv.value,
                raw: sv.raw,
                source: Source::ConfigFile(path.to_string(), key),
            },
        );
    }
    Ok(settings)
}

/// The parsed etcd default of a flag.
pub fn default_value(spec: &FlagSpec) -> Value {
    // The table's defaults are checked by a unit test; a broken one is a programming error.
    values::parse(&spec.kind, spec.default)
        .unwrap_or_else(|e| panic!("bad default {:?} for --{}: {e}", spec.default, spec.name))
}

/// Effective values: explicit settings over etcd defaults.
struct View<'a> {
    settings: &'a Settings,
}

impl View<'_> {
    fn get(&self, name: &str) -> Value {
        match self.settings.get(name) {
            Some(s) => s.value.clone(),
            None => default_value(lookup(name).unwrap_or_else(|| panic!("unknown flag {name}"))),
        }
    }

    fn is_set(&self, name: &str) -> bool {
        self.settings.contains_key(name)
    }

    fn string(&self, name: &str) -> String {
        self.get(name).as_str().to_string()
    }
}

/// Applies dispositions and etcd's validation, and builds the configs.
fn resolve(
    settings: &Settings,
    config_file: Option<String>,
    mut notices: Vec<Notice>,
) -> Result<Resolved, ConfigError> {
    let view = View { settings };
    let mut errors: Vec<String> = Vec::new();

    check_settings(settings, &mut notices, &mut errors);
    check_feature_gates(&view, &mut notices, &mut errors);
    let logging = resolve_logging(&view, &mut notices, &mut errors);
    let server = resolve_server(&view, config_file.is_some(), &mut notices, &mut errors);

    if !errors.is_empty() {
        return Err(ConfigError::Invalid(errors.join("; ")));
    }
    Ok(Resolved {
        server,
        logging,
        notices,
        config_file: config_file.map(PathBuf::from),
    })
}

/// Per-flag checks, harmless warnings, rejections and deprecation warnings.
fn check_settings(settings: &Settings, notices: &mut Vec<Notice>, errors: &mut Vec<String>) {
    for (name, s) in settings {
        let spec = s.spec;
        if let Some(check) = spec.check {
            if let Err(e) = check(&s.value) {
                errors.push(e);
            }
        }
        let non_default = s.value != default_value(spec);
        let raw = redact(name, &s.raw);
        match spec.disposition {
            // Feature gates are reported gate by gate (check_feature_gates).
            Disposition::Harmless if non_default && spec.kind != Kind::FeatureGates => notices
                .push(
                    Notice::warn(&format!(
                        "flag --{name} is accepted but not active yet in Ballast"
                    ))
                    .flag(name)
                    .value(&raw)
                    .source(&s.source),
                ),
            Disposition::Reject(why) if non_default => errors.push(format!(
                "flag --{name} is not supported yet by Ballast: {why} (set to {raw:?} {})",
                s.source
            )),
            _ => {}
        }
        let replacement = spec.replaced_by.map(|r| format!("--{r}")).or_else(|| {
            FEATURE_GATES
                .iter()
                .find(|g| g.experimental_flag == Some(spec.name))
                .map(|g| format!("--feature-gates={}={}", g.name, s.value))
        });
        if let Some(replacement) = replacement {
            notices.push(
                Notice::warn(&format!(
                    "--{name} is deprecated in etcd v3.6 and removed in v3.7; use {replacement} instead"
                ))
                .flag(name),
            );
        }
    }
}

/// `--feature-gates`: all gates are harmless; etcd's consistency rules are enforced.
fn check_feature_gates(view: &View<'_>, notices: &mut Vec<Notice>, errors: &mut Vec<String>) {
    let gates = view.get("feature-gates");
    let gates = gates.as_gates();
    for (name, on) in gates {
        let default = FEATURE_GATES
            .iter()
            .find(|g| g.name == name)
            .is_some_and(|g| g.default);
        if *on != default {
            notices.push(
                Notice::warn(&format!(
                    "feature gate {name}={on} is accepted but not active yet in Ballast"
                ))
                .flag("feature-gates")
                .value(&format!("{name}={on}")),
            );
        }
    }
    let effective = |gate: &str| -> bool {
        let spec = FEATURE_GATES.iter().find(|g| g.name == gate);
        if let Some((_, on)) = gates.iter().find(|(n, _)| n == gate) {
            return *on;
        }
        match spec.and_then(|g| g.experimental_flag) {
            Some(flag) if view.is_set(flag) => view.get(flag).as_bool(),
            _ => spec.is_some_and(|g| g.default),
        }
    };
    for gate in FEATURE_GATES {
        if let Some(flag) = gate.experimental_flag {
            if view.is_set(flag) && gates.iter().any(|(n, _)| n == gate.name) {
                errors.push(format!(
                    "cannot specify both --{flag} and --feature-gates={}=...; use --feature-gates only",
                    gate.name
                ));
            }
        }
    }
    if effective("LeaseCheckpointPersist") && !effective("LeaseCheckpoint") {
        if view.is_set("experimental-enable-lease-checkpoint-persist") {
            errors.push(
                "setting experimental-enable-lease-checkpoint-persist requires experimental-enable-lease-checkpoint".into(),
            );
        } else {
            errors.push(
                "enabling feature gate LeaseCheckpointPersist requires enabling feature gate LeaseCheckpoint".into(),
            );
        }
    }
}

fn resolve_logging(
    view: &View<'_>,
    notices: &mut Vec<Notice>,
    errors: &mut Vec<String>,
) -> LogConfig {
    let mut cfg = LogConfig::default();
    match view.string("logger").as_str() {
        "zap" => {}
        "capnslog" => errors.push("--logger=capnslog is removed in v3.5".into()),
        other => errors.push(format!("unknown logger option {other:?}")),
    }
    match logging::parse_level(&view.string("log-level")) {
        Ok(level) => cfg.level = level,
        Err(e) => errors.push(e),
    }
    match logging::parse_format(&view.string("log-format")) {
        Ok(format) => cfg.format = format,
        Err(e) => errors.push(e),
    }
    match logging::parse_outputs(view.get("log-outputs").as_strings()) {
        Ok((outputs, journal)) => {
            cfg.outputs = outputs;
            if journal {
                notices.push(
                    Notice::warn(
                        "log output systemd/journal is not supported yet; logging to stderr",
                    )
                    .flag("log-outputs"),
                );
            }
        }
        Err(e) => errors.push(e),
    }
    cfg
}

/// The URL flags Ballast implements: plain http only for now.
fn check_ballast_urls(flag: &str, urls: &[Url], bind: bool, errors: &mut Vec<String>) {
    for u in urls {
        match u.scheme.as_str() {
            "https" => errors.push(format!(
                "--{flag} {u}: TLS is not supported yet by Ballast; use an http:// URL"
            )),
            "unix" | "unixs" => errors.push(format!(
                "--{flag} {u}: unix socket URLs are not supported yet by Ballast"
            )),
            _ => {}
        }
        if bind && !u.is_bindable() {
            errors.push(format!("expected IP in URL for binding ({u})"));
        }
        if !bind && u.hostname().is_empty() {
            let all: Vec<String> = urls.iter().map(Url::to_string).collect();
            errors.push(format!(
                "--{flag} {:?} must be \"host:port\" (unexpected empty host ({u}))",
                all.join(",")
            ));
        }
    }
}

fn url_strings(urls: &[Url]) -> Vec<String> {
    urls.iter().map(Url::to_string).collect()
}

fn resolve_server(
    view: &View<'_>,
    from_file: bool,
    notices: &mut Vec<Notice>,
    errors: &mut Vec<String>,
) -> ServerConfig {
    let mut cfg = ServerConfig::default();

    // URLs. An empty list keeps etcd's default (etcd's UniqueURLs treats "" as "no change").
    let urls = |name: &str| {
        let v = view.get(name);
        match lookup(name) {
            Some(spec) if v.as_urls().is_empty() => default_value(spec),
            _ => v,
        }
    };
    let lpurls = urls("listen-peer-urls");
    let lcurls = urls("listen-client-urls");
    let apurls = urls("initial-advertise-peer-urls");
    let acurls = urls("advertise-client-urls");
    check_ballast_urls("listen-peer-urls", lpurls.as_urls(), true, errors);
    check_ballast_urls("listen-client-urls", lcurls.as_urls(), true, errors);
    check_ballast_urls(
        "initial-advertise-peer-urls",
        apurls.as_urls(),
        false,
        errors,
    );
    check_ballast_urls("advertise-client-urls", acurls.as_urls(), false, errors);
    for bind_flag in ["listen-metrics-urls", "listen-client-http-urls"] {
        for u in view.get(bind_flag).as_urls() {
            if !u.is_bindable() {
                errors.push(format!("expected IP in URL for binding ({u})"));
            }
        }
    }
    if !from_file && view.is_set("listen-client-urls") && !view.is_set("advertise-client-urls") {
        errors.push(
            "--advertise-client-urls is required when --listen-client-urls is set explicitly"
                .into(),
        );
    }
    cfg.listen_peer_urls = url_strings(lpurls.as_urls());
    cfg.listen_client_urls = url_strings(lcurls.as_urls());
    cfg.initial_advertise_peer_urls = url_strings(apurls.as_urls());
    cfg.advertise_client_urls = url_strings(acurls.as_urls());

    // Name, data dir, initial cluster.
    let name = view.string("name");
    if name == "default" {
        notices.push(
            Notice::warn(
                "it isn't recommended to use default name, please set a value for --name. Note that etcd might run into issue when multiple members have the same default name",
            )
            .flag("name")
            .value(&name),
        );
    }
    let mut data_dir = view.string("data-dir");
    if data_dir.is_empty() {
        data_dir = format!("{name}.etcd");
        notices.push(
            Notice::warn("'data-dir' was empty; using default")
                .flag("data-dir")
                .value(&data_dir),
        );
    }
    let mut initial_cluster = view.string("initial-cluster");
    if name != "default" && initial_cluster == DEFAULT_INITIAL_CLUSTER {
        let n = if name.is_empty() { "default" } else { &name };
        initial_cluster = apurls
            .as_urls()
            .iter()
            .map(|u| format!("{n}={u}"))
            .collect::<Vec<_>>()
            .join(",");
    }
    match parse_initial_cluster(&initial_cluster) {
        Ok(members) => {
            for m in &members {
                let urls: Vec<Url> = m
                    .peer_urls
                    .iter()
                    .filter_map(|u| values::parse_url(u).ok())
                    .collect();
                check_ballast_urls("initial-cluster", &urls, false, errors);
            }
            cfg.initial_cluster = members;
        }
        Err(e) => errors.push(format!("--initial-cluster {initial_cluster:?}: {e}")),
    }
    cfg.name = name;
    cfg.data_dir = PathBuf::from(data_dir);

    cfg.initial_cluster_state = match view.string("initial-cluster-state").as_str() {
        "existing" => ClusterState::Existing,
        _ => ClusterState::New,
    };
    cfg.initial_cluster_token = view.string("initial-cluster-token");

    // Numbers.
    cfg.snapshot_count = view.get("snapshot-count").as_u64();
    if cfg.snapshot_count == 0 {
        cfg.snapshot_count = DEFAULT_SNAPSHOT_COUNT;
        notices.push(
            Notice::info("snapshot count is 0; using the default")
                .flag("snapshot-count")
                .value(&DEFAULT_SNAPSHOT_COUNT.to_string()),
        );
    }
    let quota = view.get("quota-backend-bytes").as_i64();
    cfg.quota_backend_bytes = match quota {
        q if q < 0 => {
            errors.push(format!(
                "flag --quota-backend-bytes is not supported yet by Ballast with a negative value: disabling the backend quota is not implemented (set to {q})"
            ));
            DEFAULT_QUOTA_BACKEND_BYTES
        }
        0 => DEFAULT_QUOTA_BACKEND_BYTES,
        q => q as u64,
    };
    if cfg.quota_backend_bytes > MAX_SUGGESTED_QUOTA_BYTES {
        notices.push(
            Notice::warn("quota exceeds the maximum value; the suggested maximum is 8 GiB")
                .flag("quota-backend-bytes")
                .value(&cfg.quota_backend_bytes.to_string()),
        );
    }
    cfg.max_request_bytes = to_usize(
        view.get("max-request-bytes").as_u64(),
        "max-request-bytes",
        errors,
    );
    cfg.max_txn_ops = to_usize(view.get("max-txn-ops").as_u64(), "max-txn-ops", errors);

    let tick = view.get("heartbeat-interval").as_u64();
    let election = view.get("election-timeout").as_u64();
    if tick == 0 {
        errors.push(format!("--heartbeat-interval must be >0 (set to {tick}ms)"));
    } else if election == 0 {
        errors.push(format!(
            "--election-timeout must be >0 (set to {election}ms)"
        ));
    } else if tick.saturating_mul(5) > election {
        errors.push(format!(
            "--election-timeout[{election}ms] should be at least as 5 times as --heartbeat-interval[{tick}ms]"
        ));
    } else if election > MAX_ELECTION_MS {
        errors.push(format!(
            "--election-timeout[{election}ms] is too long, and should be set less than {MAX_ELECTION_MS}ms"
        ));
    }
    cfg.heartbeat_interval = Duration::from_millis(tick);
    cfg.election_timeout = Duration::from_millis(election);

    let emulated = view.string("emulated-etcd-version");
    if let Err(e) = check_emulated_version(&emulated) {
        errors.push(e);
    }
    cfg.emulated_etcd_version = emulated;

    // (flag, its pre-3.6 spelling, destination).
    for (flag, old, slot) in [
        (
            "watch-progress-notify-interval",
            Some("experimental-watch-progress-notify-interval"),
            &mut cfg.watch_progress_notify_interval,
        ),
        ("watch-stall-timeout", None, &mut cfg.watch_stall_timeout),
    ] {
        let name = match old {
            Some(old) if !view.is_set(flag) && view.is_set(old) => old,
            _ => flag,
        };
        // Like etcd, zero or less keeps the default.
        let nanos = view.get(name).as_duration_nanos();
        if nanos > 0 {
            *slot = Duration::from_nanos(nanos as u64);
        }
    }
    cfg.max_concurrent_streams =
        u32::try_from(view.get("max-concurrent-streams").as_u64()).unwrap_or(u32::MAX);
    // Zero (or less): etcd sets no enforcement policy and grpc-go enforces its default.
    let nanos = view.get("grpc-keepalive-min-time").as_duration_nanos();
    cfg.grpc_keepalive_min_time = if nanos > 0 {
        Duration::from_nanos(nanos as u64)
    } else {
        GRPC_DEFAULT_KEEPALIVE_MIN_TIME
    };
    // Zero turns the server's pings off, as etcd's "0 to disable".
    let nanos = view.get("grpc-keepalive-interval").as_duration_nanos();
    cfg.grpc_keepalive_interval = Duration::from_nanos(nanos.max(0) as u64);
    // Zero (or less): grpc-go's own default, 20 s.
    let nanos = view.get("grpc-keepalive-timeout").as_duration_nanos();
    if nanos > 0 {
        cfg.grpc_keepalive_timeout = Duration::from_nanos(nanos as u64);
    }
    // Ballast's own; zero (or less) keeps the default.
    let nanos = view.get("client-handshake-timeout").as_duration_nanos();
    if nanos > 0 {
        cfg.client_handshake_timeout = Duration::from_nanos(nanos as u64);
    }
    // Ballast's own; zero (or less) turns it off.
    let nanos = view.get("range-stall-timeout").as_duration_nanos();
    cfg.range_stall_timeout = Duration::from_nanos(nanos.max(0) as u64);
    // Ballast's own; zero (or less) turns batching off.
    let nanos = view.get("watch-batch-interval").as_duration_nanos();
    cfg.watch_batch_interval = Duration::from_nanos(nanos.max(0) as u64);
    cfg
}

fn to_usize(v: u64, flag: &str, errors: &mut Vec<String>) -> usize {
    usize::try_from(v).unwrap_or_else(|_| {
        errors.push(format!("--{flag} {v} is too large for this platform"));
        usize::MAX
    })
}

/// `--initial-cluster name=url,name=url,...` (etcd's `types.NewURLsMap`): a name may appear
/// several times, once per peer URL. Members keep their first-appearance order; each member's
/// URLs are sorted like etcd's.
pub fn parse_initial_cluster(s: &str) -> Result<Vec<InitialMember>, String> {
    let mut members: Vec<(String, Vec<String>)> = Vec::new();
    for item in s.split(',') {
        if item.is_empty() {
            continue;
        }
        let (name, url) = item.split_once('=').unwrap_or((item, ""));
        match members.iter_mut().find(|(n, _)| n == name) {
            Some((_, urls)) => urls.push(url.to_string()),
            None => members.push((name.to_string(), vec![url.to_string()])),
        }
    }
    members
        .into_iter()
        .map(|(name, urls)| {
            let mut parsed = urls
                .iter()
                .map(|u| values::parse_url(u.trim()))
                .collect::<Result<Vec<Url>, String>>()?;
            parsed.sort_by_key(Url::to_string);
            parsed.dedup();
            Ok(InitialMember {
                name,
                peer_urls: url_strings(&parsed),
            })
        })
        .collect()
}

/// `--emulated-etcd-version`: a semantic version `3.y.z`, optionally with a pre-release
/// (`3.6.0-rc.1`); Ballast speaks the etcd v3 API, so the major version must be 3.
pub fn check_emulated_version(v: &str) -> Result<(), String> {
    let err = || {
        format!(
            "invalid --emulated-etcd-version {v:?}: want a semantic version 3.y.z such as 3.6.0"
        )
    };
    let (core, pre) = match v.split_once('-') {
        Some((core, pre)) => (core, Some(pre)),
        None => (v, None),
    };
    let parts: Vec<&str> = core.split('.').collect();
    let numeric = |p: &str| {
        !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && (p == "0" || !p.starts_with('0'))
    };
    if parts.len() != 3 || !parts.iter().all(|p| numeric(p)) || parts[0] != "3" {
        return Err(err());
    }
    if let Some(pre) = pre {
        let ident_ok =
            |id: &str| !id.is_empty() && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !pre.split('.').all(ident_ok) {
            return Err(err());
        }
    }
    Ok(())
}
