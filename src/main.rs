//! The `petrel` binary: hands argv (whose first word may be `mailq` or
//! `sendmail`) to the CLI.

fn main() {
    let code = petrel::cli::main(std::env::args().collect());
    std::process::exit(code);
}
