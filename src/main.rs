//! The `hms-sync` binary: everything is in the library (`hms_sync::cli`).

/// mimalloc: the delivery path allocates many short-lived buffers; glibc's allocator spent a
/// measurable share of the CPU on them (see BENCHMARKS.md). Built without transparent huge
/// pages (Cargo.toml says why).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    hms_sync::cli::main()
}
