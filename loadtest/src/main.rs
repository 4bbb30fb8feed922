//! `keyfleet-loadtest`: runs the fleet rotation simulation.

fn main() {
    eprintln!("keyfleet-loadtest: the fleet simulation arrives with issue #9");
    std::process::exit(2);
}
