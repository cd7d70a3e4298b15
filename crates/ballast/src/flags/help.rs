//! `--help` and `--version` texts, generated from the flag table.

use super::table::{Disposition, Kind, Section, FLAGS};

const USAGE: &str = "Usage:

  ballast [flags]
    Start a Ballast member, an etcd v3 API compatible key-value store.

  ballast --version
    Show the version of Ballast and the etcd API version it reports.

  ballast -h | --help
    Show this help.

  ballast --config-file <path>
    Read the configuration from an etcd YAML configuration file. Note that if a configuration
    file is provided, other command line flags and environment variables will be ignored.

Flags use etcd's names and accept etcd's syntax (-flag or --flag, --flag=value or --flag value).
Each flag --foo-bar can also be set with the environment variable ETCD_FOO_BAR.
  [accepted, not active yet]  accepted for etcd compatibility; a non-default value is logged
                              as a warning and has no effect yet.
  [not supported yet]         a non-default value makes startup fail.
";

/// The `--help` text.
pub fn help_text() -> String {
    let mut out = String::from(USAGE);
    for section in Section::ALL {
        out.push('\n');
        out.push_str(section.title());
        out.push_str(":\n");
        for f in FLAGS.iter().filter(|f| f.section == section) {
            let default = match f.kind {
                Kind::Ignored => String::new(),
                Kind::Uint | Kind::Uint32 | Kind::Int => format!(" {}", f.default),
                _ => format!(" '{}'", f.default),
            };
            let marker = match f.disposition {
                Disposition::Harmless => " [accepted, not active yet]",
                Disposition::Reject(_) => " [not supported yet]",
                _ => "",
            };
            out.push_str(&format!(
                "  --{}{default}{marker}\n    {}\n",
                f.name, f.help
            ));
        }
    }
    out
}

/// The `--version` text (etcd prints `etcd Version`, `Git SHA`, `Go Version`, `Go OS/Arch`).
pub fn version_text(emulated_etcd_version: &str) -> String {
    format!(
        "ballast Version: {}\netcd API Version: {emulated_etcd_version}\nGit SHA: {}\nOS/Arch: {}/{}\n",
        env!("CARGO_PKG_VERSION"),
        option_env!("BALLAST_GIT_SHA").unwrap_or("Not provided"),
        std::env::consts::OS,
        std::env::consts::ARCH,
    )
}
