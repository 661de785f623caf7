//! The `petrel` binary: hands argv (whose first word may be `mailq` or
//! `sendmail`) to the CLI.

/// mimalloc instead of glibc's malloc: with a large queue, sled's page
/// cache leaves glibc's free lists long and `_int_malloc` became the
/// largest growing cost of fresh mail (docs/benchmarks.md, "Queue at
/// scale").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let code = petrel::cli::main(std::env::args().collect());
    std::process::exit(code);
}
