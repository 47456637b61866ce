//! `hms-sync completions bash|zsh|fish`: a shell completion script on stdout.

use std::process::ExitCode;

use clap_complete::Shell;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The shell: bash, zsh, fish (also elvish, powershell).
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: Shell,
    /// Complete this program name instead (`hms-bus` for the publish-only binary).
    #[arg(long, value_name = "NAME", default_value = "hms-sync", value_parser = ["hms-sync", "hms-bus"])]
    pub bin: String,
}

pub fn exec(args: &Args, hms_sync: clap::Command) -> ExitCode {
    let mut cmd = if args.bin == "hms-bus" {
        <super::BusCli as clap::CommandFactory>::command()
    } else {
        hms_sync
    };
    clap_complete::generate(
        args.shell,
        &mut cmd,
        args.bin.clone(),
        &mut std::io::stdout(),
    );
    ExitCode::SUCCESS
}
