fn main() -> std::process::ExitCode {
    hms_sync::cli::main()
}
