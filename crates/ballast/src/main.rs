//! The `ballast` server binary (see the library's docs for what it does).

fn main() -> std::process::ExitCode {
    ballast::main()
}
