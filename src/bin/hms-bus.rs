//! The `hms-bus` binary: `hms-bus publish TOPIC --data JSON`, as the seed writes it (the same
//! publish as `hms-sync publish`; everything is in the library, `hms_sync::cli`).

fn main() -> std::process::ExitCode {
    hms_sync::cli::bus_main()
}
