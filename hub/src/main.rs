use std::process::ExitCode;

fn main() -> ExitCode {
    keyfleet_hub::main_with(std::env::args_os())
}
