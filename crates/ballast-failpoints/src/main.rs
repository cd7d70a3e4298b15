//! `ballast-failpoints`: exactly the `ballast` server, built with the `failpoints` feature, so
//! the named failpoints of docs/failpoints.md exist and can be armed through `FAILPOINTS` or
//! `PUT /debug/failpoints/<name>`. Only the fault tests of this crate run it; it is never a
//! release binary.

fn main() -> std::process::ExitCode {
    ballast::main()
}
